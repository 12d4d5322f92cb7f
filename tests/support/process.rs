//! The package's examples run as separate OS processes, for tests that need more than one
//! process (e.g. two replicas of the example app on one Redis).
//!
//! Used as `support::process`. Examples are spawned through the harness's one spawner thread
//! (`support/child.rs`), like the Redis servers.
//!
//! * [`example_binary`] builds an example once per test process, with exactly the features of
//!   the running test binary (so the library already built for the test is reused), into the
//!   test's own target dir, and returns the binary's path. `cargo test --test X` builds no
//!   examples, so a test cannot assume the binary is there.
//! * [`ExampleProcess`] is one running example: started with an environment, its stdout and
//!   stderr collected (and shown in failure messages), **SIGKILLed by its PID and reaped on
//!   drop**, so a failing test leaves nothing behind. On Linux it also gets
//!   `PR_SET_PDEATHSIG(SIGKILL)`: it dies with the test process even if that is killed outright.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::child::spawn;
use super::lock;

/// How long building an example may take (a cold build of the example on a slow box).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Lines of a process's output shown in failure messages.
const OUTPUT_TAIL_LINES: usize = 40;

/// The package features the running test binary was built with, to build examples alike.
fn test_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "redis") {
        features.push("redis");
    }
    if cfg!(feature = "axum") {
        features.push("axum");
    }
    if cfg!(feature = "macros") {
        features.push("macros");
    }
    if cfg!(feature = "json") {
        features.push("json");
    }
    if cfg!(feature = "tls") {
        features.push("tls");
    }
    features
}

/// `<target>/<profile>` of the running test binary (`<target>/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent()
        .unwrap_or_else(|| panic!("{} has no parent: not a cargo target dir", deps.display()))
        .to_path_buf()
}

/// Builds example `name` (once per test process) and returns its binary's path.
///
/// The build uses the cargo that runs the tests (`$CARGO`), this package's manifest, the test
/// binary's target dir and profile, and the test binary's features; a build failure panics
/// with cargo's output.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Held during the build: two tests of one binary build the example once.
    let mut built = lock(built);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let profile_dir = profile_dir();
    let target_dir = profile_dir
        .parent()
        .expect("the profile dir is inside the target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile dir name")
        .to_owned();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--example")
        .arg(name)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--no-default-features");
    let features = test_features();
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.display()));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{described} did not finish within {BUILD_TIMEOUT:?}:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
            Err(e) => panic!("waiting for {described}: {e}"),
        }
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    assert!(
        status.success(),
        "{described} failed ({status}):\n{stdout}\n{stderr}"
    );
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{described} succeeded but {} is missing",
        path.display()
    );
    built.insert(name.to_owned(), path.clone());
    path
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// What a process printed so far (stdout and stderr interleaved by line).
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: usize,
}

/// One running example process; SIGKILLed by its PID and reaped on drop.
pub struct ExampleProcess {
    name: String,
    child: Child,
    reaped: bool,
    output: Arc<(Mutex<Output>, std::sync::Condvar)>,
}

impl ExampleProcess {
    /// Starts example binary `binary` with `env` added to this process's environment.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> ExampleProcess {
        let name = binary.file_name().map_or_else(
            || "example".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut cmd = Command::new(binary);
        cmd.envs(env.iter().copied())
            // Plain log lines, so that what the app logs can be read back.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            spawn(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let output = Arc::new((Mutex::new(Output::default()), std::sync::Condvar::new()));
        collect(child.stdout.take(), &output);
        collect(child.stderr.take(), &output);
        ExampleProcess {
            name,
            child,
            reaped: false,
            output,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the process printed.
    pub fn output_tail(&self) -> String {
        let output = lock(&self.output.0);
        let lines = &output.lines;
        lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
    }

    /// Waits (up to `timeout`) for a line for which `find` returns `Some`, and returns that.
    /// Panics with the output if the process exits or the deadline passes first.
    pub fn wait_for_line<T>(&mut self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let (output, cvar) = &*self.output;
                let output = lock(output);
                if let Some(found) = output.lines[seen..].iter().find_map(|l| find(l)) {
                    return found;
                }
                seen = output.lines.len();
                let now = Instant::now();
                // While a pipe is open, more may come: wait for it.
                if output.closed < 2 && now < deadline {
                    let wait = (deadline - now).min(Duration::from_millis(100));
                    drop(cvar.wait_timeout(output, wait));
                    continue;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                panic!(
                    "{} (pid {}) exited ({status}) before the expected line:\n{}",
                    self.name,
                    self.pid(),
                    self.output_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) printed no expected line within {timeout:?}:\n{}",
                self.name,
                self.pid(),
                self.output_tail()
            );
            // Both pipes closed but the process runs on: nothing more will be printed.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// For apps that log `listening on http://ADDR` (the example app with `APP_ADDR` port 0):
    /// the address they listen on.
    pub fn wait_for_listen_addr(&mut self, timeout: Duration) -> SocketAddr {
        self.wait_for_line(timeout, |line| {
            let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    }

    /// SIGKILLs the process by its PID and reaps it (idempotent).
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for ExampleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect<R: Read + Send + 'static>(
    pipe: Option<R>,
    output: &Arc<(Mutex<Output>, std::sync::Condvar)>,
) {
    let Some(pipe) = pipe else {
        lock(&output.0).closed += 1;
        return;
    };
    let output = Arc::clone(output);
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let (out, cvar) = &*output;
                    lock(out)
                        .lines
                        .push(line.trim_end_matches(['\r', '\n']).to_owned());
                    cvar.notify_all();
                }
            }
        }
        let (out, cvar) = &*output;
        lock(out).closed += 1;
        cvar.notify_all();
    });
}
