//! The example app (`examples/axum_app.rs`) end to end: a real listener on port 0, a real
//! HTTP client, real Redis (standalone and Sentinel).
//!
//! Each test removes a user from a group and sees `/users/{id}/resources` change, then kills
//! Redis (the standalone server, or the Sentinel master) while clients keep reading and a
//! writer keeps changing memberships: not one response may be other than 2xx, and every
//! write must be read back at once (the layer's invalidation reaches the local store even
//! while Redis is down).

mod support;

#[allow(dead_code)]
#[path = "../examples/axum_app.rs"]
mod example;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::http::{Got, HttpClient};
use support::{RedisServer, SentinelGroup};

const TOKEN: &str = "e2e-admin-token";
const NAMESPACE: &str = "stormcache-example";

#[derive(Clone)]
struct Http {
    client: HttpClient,
}

impl Http {
    async fn send(&self, method: Method, path: &str, token: Option<&str>) -> Got {
        self.client
            .try_send(method, path, token, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn get(&self, path: &str) -> Got {
        self.send(Method::GET, path, None).await
    }

    /// The Redis state from `/admin/status`; `"healthy"` is reported only once the
    /// invalidation channel is confirmed too, since until then the cache drops loads that
    /// overlap its reconciliation and a second read may miss.
    async fn state(&self) -> String {
        let got = self.send(Method::GET, "/admin/status", Some(TOKEN)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        let status: serde_json::Value = serde_json::from_str(&got.body).expect("status JSON");
        let state = status["state"].as_str().unwrap_or_default();
        if state == "healthy" && status["backplane"]["connected"] != true {
            return "healthy, backplane unconfirmed".to_owned();
        }
        state.to_owned()
    }

    async fn wait_state(&self, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.state().await;
            if state == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "state still {state:?} after {limit:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the example on `127.0.0.1:0` against `redis_url`, the way `main` does.
async fn start_app(redis_url: String) -> Http {
    let settings = example::Settings {
        addr: "127.0.0.1:0".to_owned(),
        redis_url: Some(redis_url),
        admin_token: Some(TOKEN.to_owned()),
    };
    let (listener, app, addr) = example::start(settings).await.expect("app starts");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("server runs");
    });
    Http {
        client: HttpClient::new(addr),
    }
}

fn names(body: &str) -> Vec<String> {
    let resources: Vec<example::Resource> =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    resources.into_iter().map(|r| r.name).collect()
}

/// The seed's story: alice sees `ci` through `ops`; removing her from `ops` hides it.
async fn membership_change_is_seen(http: &Http) {
    let first = http.get("/users/alice/resources").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(names(&first.body), ["handbook", "wiki", "ci"]);
    let again = http.get("/users/alice/resources").await;
    assert_eq!(again.x_cache(), "hit");
    assert_eq!(names(&again.body), ["handbook", "wiki", "ci"]);

    let removed = http
        .send(Method::DELETE, "/groups/ops/members/alice", None)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.body);
    let after = http.get("/users/alice/resources").await;
    assert_eq!((after.status, after.x_cache()), (StatusCode::OK, "miss"));
    assert_eq!(names(&after.body), ["handbook", "wiki"]);
    let groups = http.get("/users/alice/groups").await;
    assert_eq!(groups.body, r#"["staff"]"#);
}

/// Readers and one writer run until `stop`; every non-2xx answer and every write not read
/// back at once is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(http: &Http) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for reader in 0..4 {
            let (http, stop, requests, failures) = (
                http.clone(),
                stop.clone(),
                requests.clone(),
                failures.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let paths = [
                    "/resources",
                    "/users/carol/resources",
                    "/users/bob/groups",
                    "/users/bob/resources",
                ];
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) {
                    let path = paths[i % paths.len()];
                    i += 1;
                    let got = http.get(path).await;
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !got.status.is_success() {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("GET {path}: {} {}", got.status, got.body));
                    }
                }
            }));
        }
        // The writer: bob joins and leaves `ops`, and must read each change back at once.
        let (http, stop2, requests2, failures2) = (
            http.clone(),
            stop.clone(),
            requests.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut member = false;
            while !stop2.load(Ordering::Relaxed) {
                let method = if member { Method::DELETE } else { Method::POST };
                let got = http
                    .send(method.clone(), "/groups/ops/members/bob", None)
                    .await;
                requests2.fetch_add(1, Ordering::Relaxed);
                let mut failures = Vec::new();
                if !got.status.is_success() {
                    failures.push(format!("{method} membership: {} {}", got.status, got.body));
                } else {
                    member = !member;
                    let seen = http.get("/users/bob/resources").await;
                    requests2.fetch_add(1, Ordering::Relaxed);
                    if !seen.status.is_success() {
                        failures.push(format!("GET after write: {} {}", seen.status, seen.body));
                    } else if names(&seen.body).contains(&"ci".to_owned()) != member {
                        failures.push(format!(
                            "write not read back at {} requests: member={member}, saw {} (x-cache {}, age {:?})",
                            requests2.load(Ordering::Relaxed),
                            seen.body,
                            seen.x_cache(),
                            seen.headers.get("age")
                        ));
                    }
                }
                failures2.lock().expect("lock").extend(failures);
            }
        }));
        Load {
            stop,
            requests,
            failures,
            tasks,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Lets the load run until it has made `n` more requests.
    async fn run_for(&self, n: u64) {
        let target = self.requests() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.requests() < target {
            assert!(
                Instant::now() < deadline,
                "load stalled at {} requests",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let failures = self.failures.lock().expect("lock").clone();
        assert!(
            failures.is_empty(),
            "{} failures, first: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        self.requests.load(Ordering::Relaxed)
    }
}

/// The namespace's data keys: entries, tag sets, locks — not its bookkeeping (the heartbeat
/// and the invalidation log), which a flush keeps.
fn namespace_keys(server: &RedisServer) -> usize {
    // What a namespace flush keeps: heartbeats, the invalidation log, the generations.
    let bookkeeping =
        ["~hb", "~invlog", "~tagv:", "~clsv:", "~allv"].map(|k| format!("{NAMESPACE}:{k}"));
    support::resp::scan_keys(&[server.port()], &format!("{NAMESPACE}:*"))
        .into_iter()
        .filter(|key| !bookkeeping.iter().any(|b| key.starts_with(b.as_str())))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_redis_end_to_end_with_an_outage() {
    let server = RedisServer::start();
    let http = start_app(server.url()).await;
    http.wait_state("healthy", Duration::from_secs(20)).await;

    membership_change_is_seen(&http).await;
    assert!(namespace_keys(&server) > 0, "the app wrote to Redis");

    let load = Load::start(&http);
    load.run_for(200).await;
    server.kill();
    http.wait_state("down", Duration::from_secs(10)).await;
    load.run_for(300).await;
    tokio::task::block_in_place(|| server.restart());
    http.wait_state("healthy", Duration::from_secs(30)).await;
    load.run_for(200).await;
    let total = load.finish().await;
    assert!(total >= 700, "{total} requests");

    // The admin flush reaches the namespace and nothing else.
    server.cmd(&["SET", "someone-else:key", "kept"]);
    server.cmd(&["SET", "stormcache-examplex:key", "kept"]);
    let empty = http.send(Method::POST, "/admin/flush", Some(TOKEN)).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
    let flush_all = admin_post(&http, "/admin/flush", r#"{"scope":"all"}"#).await;
    assert_eq!(flush_all.0, StatusCode::OK, "{}", flush_all.1);
    assert_eq!(namespace_keys(&server), 0, "namespace flushed");
    assert_eq!(
        server
            .cmd(&["GET", "someone-else:key"])
            .as_text()
            .as_deref(),
        Some("kept")
    );
    assert_eq!(
        server
            .cmd(&["GET", "stormcache-examplex:key"])
            .as_text()
            .as_deref(),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_end_to_end_with_a_master_kill() {
    let group = tokio::task::block_in_place(SentinelGroup::start);
    let http = start_app(group.url()).await;
    http.wait_state("healthy", Duration::from_secs(20)).await;

    membership_change_is_seen(&http).await;
    assert!(
        namespace_keys(group.master()) > 0,
        "the app wrote to the master"
    );

    let load = Load::start(&http);
    load.run_for(200).await;
    let old = group.kill_master();
    tokio::task::block_in_place(|| group.wait_for_new_master(old, Duration::from_secs(30)));
    load.run_for(300).await;
    http.wait_state("healthy", Duration::from_secs(30)).await;
    load.run_for(200).await;
    let total = load.finish().await;
    assert!(total >= 700, "{total} requests");
    // alice's removal, made before the failover, still holds.
    assert_eq!(
        names(&http.get("/users/alice/resources").await.body),
        ["handbook", "wiki"]
    );
}

/// POSTs a JSON body to an admin endpoint.
async fn admin_post(http: &Http, path: &str, body: &str) -> (StatusCode, String) {
    let req = Request::post(format!("{}{path}", http.client.base()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let client: Client<HttpConnector, http_body_util::Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let res = client.request(req).await.expect("admin answers");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The series and labels one dashboard expression reads: every `stormcache_*` name, and the
/// labels named in its selectors and `by (…)` clauses (Grafana's own `$…` aside).
fn dashboard_queries() -> Vec<(String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/stormcache.json");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let words: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            let mut labels: Vec<String> = Vec::new();
            // `name=`, `name=~`, `name!=` inside selectors.
            for part in expr.split(['{', ',']).skip(1) {
                let name: String = part
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let rest = part.trim_start()[name.len()..].trim_start();
                if !name.is_empty() && (rest.starts_with('=') || rest.starts_with("!=")) {
                    labels.push(name);
                }
            }
            // `by (a, b)`.
            for clause in expr.split("by (").skip(1) {
                let inside = clause.split(')').next().unwrap_or_default();
                labels.extend(inside.split(',').map(|l| l.trim().to_owned()));
            }
            labels.sort();
            labels.dedup();
            for name in words.iter().filter(|w| w.starts_with("stormcache_")) {
                queries.push(((*name).to_owned(), labels.clone()));
            }
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_queries_is_exported_with_its_labels() {
    let server = RedisServer::start();
    let http = start_app(server.url()).await;
    http.wait_state("healthy", Duration::from_secs(20)).await;
    let load = Load::start(&http);
    load.run_for(300).await;
    load.finish().await;

    let scrape = http.get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    let queries = dashboard_queries();
    assert!(queries.len() >= 13, "{queries:?}");
    for (name, labels) in queries {
        let series: Vec<&str> = scrape
            .body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        assert!(
            !series.is_empty(),
            "the dashboard queries {name}, which /metrics does not export:\n{}",
            scrape.body
        );
        for label in labels {
            assert!(
                series.iter().any(|s| s.contains(&format!("{label}=\""))),
                "the dashboard reads {name} by `{label}`, which it does not carry: {series:?}"
            );
        }
    }
}
