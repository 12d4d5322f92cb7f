//! HTTP throughput of a cached route, stormcache's `CacheLayer` beside axum-response-cache
//! and a plain axum handler, through real HTTP on loopback, in one run.
//!
//! Six axum servers run side by side on a two-worker runtime of their own, each answering
//! `GET /data` with the same prebuilt 1 KiB JSON body (`Bytes`):
//!
//! - `plain`: the handler, no layer (the floor);
//! - `cached`: the handler behind stormcache's `CacheLayer` (local store only, TTL 1 h);
//! - `axum_response_cache`: the handler behind axum-response-cache's
//!   `CacheLayer::with_lifespan(1 h)`;
//! - `slow_plain`, `slow_cached`, `slow_axum_response_cache`: the same three with a handler
//!   that sleeps 5 ms first (the "5 ms origin").
//!
//! The load generator is the lean HTTP/1.1 client of `benches/http.rs` on its own thread:
//! `c` keep-alive connections (1, then 64), one request in flight on each, every answer read
//! to its last byte (status and `Content-Length` checked, `x-cache: hit` for stormcache's).
//! Every cached server counts its origin calls: after the warm-up they must not move (all
//! hits). Scenarios are interleaved, each round measures every one for a fixed time, and the
//! figures are medians (min beside them) of the rounds; ratios are medians of per-round
//! ratios.
//!
//! Before that, `in_process_*_ns`: nanoseconds per request through each fast router with
//! `ServiceExt::oneshot` (no network).
//!
//! ```text
//! cargo bench --manifest-path benches/peers/Cargo.toml --bench peers_http
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{figure, summarize};
use stormcache::Cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: [usize; 2] = [1, 64];
const ROUNDS: usize = 9;
const MEASURE: Duration = Duration::from_millis(1_000);
const SLOW: Duration = Duration::from_millis(5);
const TTL: Duration = Duration::from_secs(3600);

/// A 1 KiB JSON document.
fn body() -> Bytes {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < 1024 - 40 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"id\":{i},\"name\":\"item-{i}\"}}"));
        i += 1;
    }
    s.push_str("],\"pad\":\"");
    while s.len() < 1024 - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

#[derive(Clone, Copy, PartialEq)]
enum Layer {
    None,
    Stormcache,
    AxumResponseCache,
}

fn router(slow: bool, layer: Layer, origin_calls: Arc<AtomicU64>) -> Router {
    let payload = body();
    let handler = move || {
        let payload = payload.clone();
        let origin_calls = Arc::clone(&origin_calls);
        async move {
            origin_calls.fetch_add(1, Ordering::Relaxed);
            if slow {
                tokio::time::sleep(SLOW).await;
            }
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                payload,
            )
        }
    };
    let app = Router::new().route("/data", get(handler));
    match layer {
        Layer::None => app,
        Layer::Stormcache => {
            let cache = Cache::builder("bench-peers-http").build().expect("cache");
            app.layer(stormcache::layer::CacheLayer::new(cache).ttl(TTL))
        }
        Layer::AxumResponseCache => app.layer(axum_response_cache::CacheLayer::with_lifespan(TTL)),
    }
}

#[derive(Clone)]
struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    layer: Layer,
    origin_calls: Arc<AtomicU64>,
}

const SCENARIOS: [(&str, bool, Layer); 6] = [
    ("plain", false, Layer::None),
    ("cached", false, Layer::Stormcache),
    ("axum_response_cache", false, Layer::AxumResponseCache),
    ("slow_plain", true, Layer::None),
    ("slow_cached", true, Layer::Stormcache),
    ("slow_axum_response_cache", true, Layer::AxumResponseCache),
];

/// Starts the servers on a two-worker runtime on its own thread.
fn start_servers() -> Vec<Scenario> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = common::runtime();
        rt.block_on(async move {
            let mut scenarios = Vec::new();
            for (name, slow, layer) in SCENARIOS {
                let origin_calls = Arc::new(AtomicU64::new(0));
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                let app = router(slow, layer, Arc::clone(&origin_calls));
                tokio::spawn(async move {
                    axum::serve(listener, app).await.expect("serve");
                });
                scenarios.push(Scenario {
                    name,
                    addr,
                    layer,
                    origin_calls,
                });
            }
            tx.send(scenarios).expect("send");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("servers started")
}

/// Finds `needle` in `hay`, ASCII case-insensitively.
fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// One keep-alive connection sending requests one after another until `stop`.
async fn connection(
    addr: SocketAddr,
    check_hit: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    const REQUEST: &[u8] = b"GET /data HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 8192];
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(REQUEST).await.expect("write");
        let mut len = 0;
        let head_end = loop {
            let n = stream.read(&mut buf[len..]).await.expect("read");
            assert!(n > 0, "server closed the connection");
            len += n;
            if let Some(i) = find_ci(&buf[..len], b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = &buf[..head_end];
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(head)
        );
        if check_hit && count == 0 {
            assert!(
                find_ci(head, b"x-cache: hit").is_some(),
                "not a hit: {}",
                String::from_utf8_lossy(head)
            );
        }
        let at = find_ci(head, b"content-length:").expect("content-length") + 15;
        let digits: String = head[at..]
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        let body_len: usize = digits.parse().expect("length");
        while len < head_end + body_len {
            let n = stream.read(&mut buf[len..]).await.expect("read body");
            assert!(n > 0, "server closed mid-body");
            len += n;
        }
        assert_eq!(len, head_end + body_len, "one response at a time");
        count += 1;
    }
    done.fetch_add(count, Ordering::Relaxed);
}

/// Requests per second against `scenario` over `MEASURE`, on `connections` connections.
fn measure(
    rt: &tokio::runtime::Runtime,
    scenario: &Scenario,
    connections: usize,
    check_hit: bool,
) -> f64 {
    let check_hit = check_hit && scenario.layer == Layer::Stormcache;
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                tokio::spawn(connection(
                    scenario.addr,
                    check_hit,
                    Arc::clone(&stop),
                    Arc::clone(&done),
                ))
            })
            .collect();
        let started = Instant::now();
        tokio::time::sleep(MEASURE).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("connection task");
        }
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    })
}

/// Nanoseconds per request through the router in process (no network): `oneshot`, then the
/// body collected.
fn in_process_ns(rt: &tokio::runtime::Runtime, app: Router, iters: u32) -> f64 {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    rt.block_on(async move {
        let started = Instant::now();
        for _ in 0..iters {
            let req = axum::http::Request::get("/data")
                .body(axum::body::Body::empty())
                .expect("request");
            let res = app.clone().oneshot(req).await.expect("infallible");
            let body = res.into_body().collect().await.expect("body");
            std::hint::black_box(body);
        }
        started.elapsed().as_nanos() as f64 / f64::from(iters)
    })
}

fn in_process() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let calls = Arc::new(AtomicU64::new(0));
    // `with_state` turns the handlers into services once, as `axum::serve` does; a router
    // called as it is builds them, and applies its layers, on every request.
    let apps = [
        (
            "in_process_plain_ns",
            router(false, Layer::None, calls.clone()).with_state(()),
        ),
        (
            "in_process_cached_ns",
            router(false, Layer::Stormcache, calls.clone()).with_state(()),
        ),
        (
            "in_process_axum_response_cache_ns",
            router(false, Layer::AxumResponseCache, calls.clone()).with_state(()),
        ),
    ];
    for (_, app) in &apps {
        in_process_ns(&rt, app.clone(), 10_000);
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); apps.len()];
    for _ in 0..ROUNDS {
        for (i, (_, app)) in apps.iter().enumerate() {
            ns[i].push(in_process_ns(&rt, app.clone(), 100_000));
        }
    }
    for (i, (name, _)) in apps.iter().enumerate() {
        figure(name, summarize(ns[i].clone()), "ns/req");
    }
    let ratio =
        |a: usize, b: usize| summarize(ns[a].iter().zip(&ns[b]).map(|(x, y)| x / y).collect());
    figure("in_process_cached_vs_plain", ratio(1, 0), "x");
    figure("in_process_cached_vs_axum_response_cache", ratio(1, 2), "x");
}

fn main() {
    in_process();
    let scenarios = start_servers();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "# peers_http: {} scenarios, {ROUNDS} rounds of {} ms each (+1 warm-up), 1 KiB body, \
         {:?} connections",
        scenarios.len(),
        MEASURE.as_millis(),
        CONNECTIONS
    );
    // Warm-up: fills the caches, opens the code paths.
    for s in &scenarios {
        measure(&client, s, 1, false);
    }
    let origin_after_warmup: Vec<u64> = scenarios
        .iter()
        .map(|s| s.origin_calls.load(Ordering::Relaxed))
        .collect();
    let index = |name: &str| {
        scenarios
            .iter()
            .position(|s| s.name == name)
            .expect("scenario")
    };
    for connections in CONNECTIONS {
        for s in &scenarios {
            measure(&client, s, connections, false);
        }
        let mut rps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
        for round in 0..ROUNDS {
            for k in 0..scenarios.len() {
                let i = (round + k) % scenarios.len();
                let s = &scenarios[i];
                let r = measure(&client, s, connections, true);
                println!(
                    "#      c{connections} round {round} {}: {r:.0} req/s",
                    s.name
                );
                rps[i].push(r);
            }
        }
        let c = connections;
        for (i, s) in scenarios.iter().enumerate() {
            figure(
                &format!("http_{}_c{c}_rps", s.name),
                summarize(rps[i].clone()),
                "req/s",
            );
        }
        let ratio = |a: &str, b: &str| {
            let (a, b) = (index(a), index(b));
            summarize(rps[a].iter().zip(&rps[b]).map(|(x, y)| x / y).collect())
        };
        figure(
            &format!("http_cached_vs_plain_c{c}"),
            ratio("cached", "plain"),
            "x",
        );
        figure(
            &format!("http_cached_vs_axum_response_cache_c{c}"),
            ratio("cached", "axum_response_cache"),
            "x",
        );
        figure(
            &format!("http_axum_response_cache_vs_plain_c{c}"),
            ratio("axum_response_cache", "plain"),
            "x",
        );
        figure(
            &format!("http_slow_cached_vs_fast_cached_c{c}"),
            ratio("slow_cached", "cached"),
            "x",
        );
        figure(
            &format!("http_slow_cached_vs_slow_axum_response_cache_c{c}"),
            ratio("slow_cached", "slow_axum_response_cache"),
            "x",
        );
        figure(
            &format!("http_slow_axum_response_cache_vs_fast_c{c}"),
            ratio("slow_axum_response_cache", "axum_response_cache"),
            "x",
        );
    }
    for (i, s) in scenarios.iter().enumerate() {
        if s.layer != Layer::None {
            assert_eq!(
                s.origin_calls.load(Ordering::Relaxed),
                origin_after_warmup[i],
                "{}: every timed request was a hit",
                s.name
            );
        }
    }
}
