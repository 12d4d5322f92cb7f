//! Child processes: every spawn goes through one long-lived thread, and every child is owned
//! by a value that SIGKILLs it by PID and reaps it on drop. Also the log-file readers used in
//! failure messages.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;

use super::lock;

/// Spawns `cmd`. On Linux the child gets PR_SET_PDEATHSIG(SIGKILL). That signal fires when the
/// *thread* that forked the child exits, so every spawn goes through one thread that lives as
/// long as the process (a child forked from a short-lived, e.g. tokio, thread would die with
/// that thread). Used for the Redis servers, `redis-cli` and the example processes alike.
pub(super) fn spawn(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("stormcache-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in jobs_rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
            })
            .expect("start the process-spawner thread");
        Mutex::new(jobs_tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(spawner)
        .send((cmd, reply_tx))
        .expect("process-spawner thread is gone");
    reply_rx.recv().expect("process-spawner thread is gone")
}

#[cfg(target_os = "linux")]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> io::Result<Child> {
    cmd.spawn()
}

/// A spawned child that is SIGKILLed and reaped on drop.
pub(super) struct ChildProcess {
    pub(super) child: Child,
    pub(super) reaped: bool,
}

impl ChildProcess {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.reaped {
            return Err(io::Error::other("process already exited"));
        }
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot have been reused.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `Some(status)` once the child has exited (it is then reaped).
    pub(super) fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(status)
            }
            _ => None,
        }
    }

    pub(super) fn kill(&mut self) {
        if !self.reaped {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub(super) fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
