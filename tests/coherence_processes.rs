//! Coherence across separate OS processes: the example app (`examples/axum_app.rs`) started
//! twice, as its own binary, on one real Redis (standalone, and a 3-master Cluster).
//!
//! Both processes hold `/users/alice/resources` in their local store (L1). A membership change
//! made through process A invalidates it; process B, which is not told anything over HTTP,
//! must stop serving its L1 copy and answer the new data within 100 ms (scaled by
//! `STORMCACHE_TEST_TIMEOUT_SCALE`). Then the same the other way round.
//!
//! Each process has its own in-memory "database" (the example's origin), so B's origin still
//! holds the old membership: the only way B can answer the new data is to drop its L1 entry
//! (the backplane message from A) and read what A wrote back to Redis. So after the change,
//! A reads the resource once (as the client that made a change does), which puts the new
//! answer in Redis, and then B is polled; the 100 ms run from the moment A's change was
//! answered. That B never asked its own origin is checked too (its loader counter does not
//! move). Before A's read-back, B's `/admin/status` is polled until it has received the
//! invalidation (`backplane.received`), which times the channel alone.
//!
//! Every process a test starts is SIGKILLed by its PID and reaped when the test ends, pass or
//! fail (see `support/process.rs`), and so are the Redis servers (`support`).

#![cfg(all(feature = "redis", feature = "axum"))]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::Value;
use support::http::{Got, HttpClient};
use support::process::{example_binary, ExampleProcess};
use support::scaled;
use support::topology::Topology;

const TOKEN: &str = "coherence-admin-token";
const RESOURCE: &str = "/users/alice/resources";
const WITH_OPS: [&str; 3] = ["handbook", "wiki", "ci"];
const WITHOUT_OPS: [&str; 2] = ["handbook", "wiki"];

/// One example app process and an HTTP client to it.
struct App {
    name: &'static str,
    process: ExampleProcess,
    http: HttpClient,
}

/// The resource names in a `/users/{id}/resources` answer.
fn names(got: &Got) -> Vec<String> {
    let resources: Vec<Value> = serde_json::from_str(&got.body)
        .unwrap_or_else(|e| panic!("{e}: {} {}", got.status, got.body));
    resources
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

impl App {
    /// Starts the example binary on `127.0.0.1:0` against `redis_url`.
    fn start(name: &'static str, redis_url: &str) -> App {
        let binary = example_binary("axum_app");
        let mut process = ExampleProcess::start(
            &binary,
            &[
                ("APP_ADDR", "127.0.0.1:0"),
                ("REDIS_URL", redis_url),
                ("ADMIN_TOKEN", TOKEN),
                ("RUST_LOG", "info"),
            ],
        );
        let addr: SocketAddr = process.wait_for_listen_addr(scaled(Duration::from_secs(30)));
        App {
            name,
            process,
            http: HttpClient::new(addr),
        }
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>) -> Got {
        let limit = scaled(Duration::from_secs(10));
        self.http
            .try_send(method, path, token, limit)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; its output:\n{}",
                    self.name,
                    self.process.output_tail()
                )
            })
    }

    async fn get(&self, path: &str) -> Got {
        let got = self.send(Method::GET, path, None).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{}: GET {path}: {}",
            self.name,
            got.body
        );
        got
    }

    /// `/admin/status` as JSON.
    async fn status(&self) -> Value {
        let got = self.send(Method::GET, "/admin/status", Some(TOKEN)).await;
        assert_eq!(got.status, StatusCode::OK, "{}: {}", self.name, got.body);
        serde_json::from_str(&got.body).expect("status JSON")
    }

    /// Waits until the process uses Redis (`state` healthy: `Cache::redis_in_use`) and its
    /// invalidation channel is confirmed (`backplane.connected`: `Cache::coherent` with a
    /// backplane), polling `/admin/status`.
    async fn wait_coherent(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await;
            if status["state"] == "healthy" && status["backplane"]["connected"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}): not using Redis with a confirmed channel after {limit:?}: {status}\n{}",
                self.name,
                self.process.pid(),
                self.process.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn counter(&self, name: &str) -> u64 {
        self.status().await["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no counter {name}", self.name))
    }

    async fn backplane(&self, name: &str) -> u64 {
        self.status().await["backplane"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no backplane.{name}", self.name))
    }

    /// Reads `RESOURCE` until it is in this process's L1: a read served as a local hit
    /// (`x-cache: hit` and the `l1_hits` counter moved), answering `want`.
    async fn warm(&self, want: &[&str]) {
        let first = self.get(RESOURCE).await;
        assert_eq!(names(&first), want, "{}: {}", self.name, first.body);
        let l1_before = self.counter("l1_hits").await;
        let again = self.get(RESOURCE).await;
        let l1_after = self.counter("l1_hits").await;
        assert_eq!(names(&again), want, "{}", self.name);
        assert_eq!(
            again.x_cache(),
            "hit",
            "{}: the second read is a hit",
            self.name
        );
        assert!(
            l1_after > l1_before,
            "{}: the second read was served from L1 ({l1_before} -> {l1_after} local hits)",
            self.name
        );
    }
}

/// A membership change made through `writer` reaches `reader`'s L1: `reader` answers `want`
/// within 100 ms (scaled) of the change's answer, without asking its own origin.
async fn change_is_seen(writer: &App, reader: &App, method: Method, want: &[&str]) -> Duration {
    let old = reader.get(RESOURCE).await;
    assert_ne!(names(&old), want, "{}: already changed", reader.name);
    assert_eq!(old.x_cache(), "hit", "{}: still held in L1", reader.name);
    let received_before = reader.backplane("received").await;
    let loads_before = reader.counter("loader_calls").await;

    let changed = writer
        .send(method.clone(), "/groups/ops/members/alice", None)
        .await;
    let changed_at = Instant::now();
    assert!(
        changed.status.is_success(),
        "{}: {method} membership: {} {}",
        writer.name,
        changed.status,
        changed.body
    );
    // The invalidation reaches the reader (its `received` counter; its status does not
    // touch the cache).
    let limit = scaled(Duration::from_millis(100));
    while reader.backplane("received").await == received_before {
        assert!(
            changed_at.elapsed() < limit,
            "{}: no invalidation received {:?} after the change made through {}",
            reader.name,
            changed_at.elapsed(),
            writer.name
        );
    }
    let arrived = changed_at.elapsed();
    // The writer reads its change back: loaded from its origin, now in Redis.
    let back = writer.get(RESOURCE).await;
    assert_eq!(names(&back), want, "{}: own change read back", writer.name);
    assert_eq!(
        back.x_cache(),
        "miss",
        "{}: own entry invalidated",
        writer.name
    );

    // Poll the other process: no sleeps, one request after the other.
    let mut polls = 0u32;
    let took = loop {
        let got = reader.get(RESOURCE).await;
        polls += 1;
        if names(&got) == want {
            break changed_at.elapsed();
        }
        assert!(
            changed_at.elapsed() < limit,
            "{} still answers {} (x-cache {}) {:?} after the change made through {} \
             ({polls} polls); its status: {}\n{}",
            reader.name,
            got.body,
            got.x_cache(),
            changed_at.elapsed(),
            writer.name,
            reader.status().await,
            reader.process.output_tail()
        );
    };
    assert!(took < limit, "{took:?}");
    eprintln!(
        "{} -> {}: invalidation received after {arrived:?}, new data served after {took:?} \
         ({polls} polls)",
        writer.name, reader.name
    );
    assert_eq!(
        reader.counter("loader_calls").await,
        loads_before,
        "{}: the new data came from Redis, not from its own (stale) origin",
        reader.name
    );
    took
}

async fn two_processes_stay_coherent(topology: &Topology) {
    let url = topology.url();
    let (a, b) = tokio::task::block_in_place(|| (App::start("A", &url), App::start("B", &url)));
    assert_ne!(a.process.pid(), b.process.pid());
    let ready = scaled(Duration::from_secs(30));
    a.wait_coherent(ready).await;
    b.wait_coherent(ready).await;

    // Both hold alice's resources in L1 (B's first read may come from Redis, written by A).
    a.warm(&WITH_OPS).await;
    b.warm(&WITH_OPS).await;

    // A removes alice from ops: B drops its copy.
    change_is_seen(&a, &b, Method::DELETE, &WITHOUT_OPS).await;
    // Now the origins disagree (B's still lists alice in ops). Bring B's in line with a
    // change through B, and wait until A has received its invalidation.
    let a_received = a.backplane("received").await;
    let removed_on_b = b
        .send(Method::DELETE, "/groups/ops/members/alice", None)
        .await;
    assert_eq!(
        removed_on_b.status,
        StatusCode::NO_CONTENT,
        "{}",
        removed_on_b.body
    );
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while a.backplane("received").await == a_received {
        assert!(
            Instant::now() < deadline,
            "A never received B's invalidation"
        );
    }
    // Both hold "alice not in ops" in L1 again.
    b.warm(&WITHOUT_OPS).await;
    a.warm(&WITHOUT_OPS).await;
    // B adds alice to ops: A drops its copy.
    change_is_seen(&b, &a, Method::POST, &WITH_OPS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_standalone_redis() {
    let topology = tokio::task::block_in_place(Topology::standalone);
    two_processes_stay_coherent(&topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_a_cluster() {
    let topology = tokio::task::block_in_place(Topology::cluster);
    two_processes_stay_coherent(&topology).await;
}
