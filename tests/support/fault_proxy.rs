//! [`FaultProxy`]: a TCP proxy with pass / blackhole / reset / delay modes on its own thread.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{reserve_port, scaled, wait_until, LOCALHOST};

/// Behaviour of a [`FaultProxy`]; switchable at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Pass,
    /// Network partition: connections stay open and new ones are accepted, but nothing is
    /// forwarded either way. Bytes already read are held and delivered in order after the
    /// partition heals (like TCP retransmission); the upstream is not dialled until then.
    Blackhole,
    /// Every existing connection is closed with an RST, and new ones are reset immediately.
    Reset,
    /// Forward after adding this latency to each chunk, in both directions, preserving order.
    Delay(Duration),
}

/// A fault-injecting TCP proxy on `127.0.0.1:<free port>` forwarding to `127.0.0.1:target`.
///
/// It runs on its own OS thread with its own current-thread tokio runtime, so it works the same
/// under any test runtime flavour and keeps working while test code blocks. Dropping it stops the
/// runtime and closes every connection.
pub struct FaultProxy {
    port: u16,
    target_port: u16,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    live: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:target_port` in [`ProxyMode::Pass`].
    pub fn start(target_port: u16) -> FaultProxy {
        let listener =
            TcpListener::bind((LOCALHOST, 0)).expect("bind the fault proxy to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener non-blocking");
        let port = listener.local_addr().expect("proxy local_addr").port();
        reserve_port(port);
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let (mode, mode_rx) = tokio::sync::watch::channel(ProxyMode::Pass);
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let live_in_thread = Arc::clone(&live);
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the fault proxy's tokio runtime");
                runtime.block_on(proxy_accept_loop(
                    listener,
                    target,
                    mode_rx,
                    shutdown_rx,
                    live_in_thread,
                ));
                // Dropping the runtime drops every connection task and so closes its sockets.
            })
            .expect("spawn the fault proxy thread");
        FaultProxy {
            port,
            target_port,
            mode,
            live,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn target_port(&self) -> u16 {
        self.target_port
    }

    /// `"127.0.0.1:PORT"` of the proxy.
    pub fn addr(&self) -> String {
        format!("{LOCALHOST}:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{LOCALHOST}:{}", self.port)
    }

    /// Client connections the proxy currently holds. A client that hangs up while the proxy is
    /// blackholed is only noticed once the partition heals (the proxy is not reading then).
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole);
    }

    pub fn delay(&self, latency: Duration) {
        self.set_mode(ProxyMode::Delay(latency));
    }

    /// Switches to [`ProxyMode::Reset`] and waits (5 s deadline) until every existing connection
    /// has been reset.
    pub fn reset(&self) {
        self.set_mode(ProxyMode::Reset);
        wait_until(
            scaled(Duration::from_secs(5)),
            "the fault proxy to reset its connections",
            || self.connections() == 0,
        );
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !thread::panicking() {
                panic!("the fault proxy thread panicked");
            }
        }
    }
}

/// Decrements the live-connection count when a connection task ends (or is dropped).
struct LiveConnection(Arc<AtomicUsize>);

impl LiveConnection {
    fn new(live: &Arc<AtomicUsize>) -> LiveConnection {
        live.fetch_add(1, Ordering::SeqCst);
        LiveConnection(Arc::clone(live))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn proxy_accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    live: Arc<AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .expect("register the proxy listener with tokio");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let guard = LiveConnection::new(&live);
                    tokio::spawn(proxy_connection(client, target, mode.clone(), guard));
                }
                // E.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Makes the next close of `fd` send an RST instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn abort_stream(stream: tokio::net::TcpStream) {
    set_linger_zero(stream.as_raw_fd());
    drop(stream);
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    target: SocketAddr,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    _live: LiveConnection,
) {
    // During a partition the upstream is not even dialled; a reset refuses the connection.
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Reset => return abort_stream(client),
            ProxyMode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            ProxyMode::Pass | ProxyMode::Delay(_) => break,
        }
    }
    let mut client = client;
    let mut upstream = match tokio::net::TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        // Like connecting to a dead port: the client sees a reset.
        Err(_) => return abort_stream(client),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let must_reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let relay = async {
            tokio::try_join!(
                proxy_pump(&mut client_read, &mut upstream_write, mode.clone()),
                proxy_pump(&mut upstream_read, &mut client_write, mode.clone()),
            )
        };
        tokio::select! {
            result = relay => result.is_err(),
            _ = wait_for_mode(mode.clone(), |m| m == ProxyMode::Reset) => true,
        }
    };
    if must_reset {
        abort_stream(client);
        abort_stream(upstream);
    }
}

/// Resolves once `accept(mode)` holds; never resolves if the proxy is being dropped.
async fn wait_for_mode(
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    accept: impl Fn(ProxyMode) -> bool,
) {
    loop {
        if accept(*mode.borrow_and_update()) {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies `reader` to `writer` honouring the mode: holds data while blackholed and delays each
/// chunk by the current latency (measured from when it was read, so order is kept and latency
/// does not accumulate). Propagates EOF as a FIN.
async fn proxy_pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let not_blackholed = |m: ProxyMode| m != ProxyMode::Blackhole;
    let (chunks_tx, mut chunks_rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let read_mode = mode.clone();
    let read_side = async move {
        loop {
            wait_for_mode(read_mode.clone(), not_blackholed).await;
            let mut buf = vec![0u8; 16 * 1024];
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            buf.truncate(n);
            let latency = match *read_mode.borrow() {
                ProxyMode::Delay(latency) => latency,
                _ => Duration::ZERO,
            };
            if chunks_tx
                .send((tokio::time::Instant::now() + latency, buf))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write_side = async {
        while let Some((due, chunk)) = chunks_rx.recv().await {
            tokio::time::sleep_until(due).await;
            wait_for_mode(mode.clone(), not_blackholed).await;
            writer.write_all(&chunk).await?;
        }
        wait_for_mode(mode.clone(), not_blackholed).await;
        let _ = writer.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}
