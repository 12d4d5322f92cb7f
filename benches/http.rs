//! HTTP throughput of the cache layer, with a real server on loopback.
//!
//! Four axum servers run side by side on a two-worker runtime of their own:
//!
//! - `plain`: a handler answering the same 1 KiB JSON body, no layer;
//! - `cached_hit`: the same handler behind a default `CacheLayer` (all hits once warm);
//! - `slow_origin_plain` / `slow_origin_cached`: a handler that sleeps 5 ms first, without and
//!   with the layer.
//!
//! The load generator is a lean HTTP/1.1 client on its own thread: 64 keep-alive
//! connections, one request in flight on each, each answer read to its last byte (status,
//! `Content-Length` and, for the cached servers, `x-cache: hit` are checked). Scenarios are
//! interleaved, each round measures every one for a fixed time, and the figures are medians
//! (min beside them) of the rounds; ratios are medians of per-round ratios.
//!
//! Before that, `in_process_*`: nanoseconds per request through the router with
//! `ServiceExt::oneshot` (no network), plain and cached hit, and their difference — what the
//! layer costs on a hit.
//!
//! `slow_cached_vs_plain` cannot exceed `slow_ratio_ceiling` (= `plain_rps` /
//! `slow_origin_plain_rps`): with 64 connections the slow plain server is held to about
//! 64 / 5 ms, and the cached one at best answers like the plain fast one.
//! `slow_cached_vs_ceiling` says how close it gets.
//!
//! ```text
//! cargo bench --bench http
//! ```

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{figure, summarize};
use stormcache::layer::CacheLayer;
use stormcache::Cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 64;
const ROUNDS: usize = 5;
const MEASURE: Duration = Duration::from_millis(2_000);
const SLOW: Duration = Duration::from_millis(5);

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

fn router(slow: bool, cached: Option<Cache>) -> Router {
    let payload = body();
    let handler = move || {
        let payload = payload.clone();
        async move {
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
    match cached {
        Some(cache) => app.layer(CacheLayer::new(cache)),
        None => app,
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    cached: bool,
}

/// Starts the four servers on a two-worker runtime on its own thread.
fn start_servers() -> Vec<Scenario> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = common::runtime();
        rt.block_on(async move {
            let cache = Cache::builder("bench-http").build().expect("cache");
            let apps = [
                ("plain", false, None),
                ("cached_hit", false, Some(cache.clone())),
                ("slow_origin_plain", true, None),
                ("slow_origin_cached", true, Some(cache)),
            ];
            let mut scenarios = Vec::new();
            for (name, slow, cache) in apps {
                let cached = cache.is_some();
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(async move {
                    axum::serve(listener, router(slow, cache))
                        .await
                        .expect("serve");
                });
                scenarios.push(Scenario { name, addr, cached });
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
    scenario: Scenario,
    check_hit: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    const REQUEST: &[u8] = b"GET /data HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut stream = TcpStream::connect(scenario.addr).await.expect("connect");
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
        if check_hit && scenario.cached && count == 0 {
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

/// Requests per second against `scenario` over `MEASURE`.
fn measure(rt: &tokio::runtime::Runtime, scenario: Scenario, check_hit: bool) -> f64 {
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                tokio::spawn(connection(
                    scenario,
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

fn main() {
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let cache = Cache::builder("bench-http-inproc").build().expect("cache");
        // `with_state` turns the handlers into services once, as `axum::serve` does; a
        // router called as it is builds them, and applies its layers, on every request.
        let plain = router(false, None).with_state(());
        let cached = router(false, Some(cache)).with_state(());
        in_process_ns(&rt, cached.clone(), 10_000);
        let mut p = Vec::new();
        let mut c = Vec::new();
        for _ in 0..ROUNDS {
            p.push(in_process_ns(&rt, plain.clone(), 100_000));
            c.push(in_process_ns(&rt, cached.clone(), 100_000));
        }
        let diff: Vec<f64> = c.iter().zip(&p).map(|(c, p)| c - p).collect();
        figure("in_process_plain_ns", summarize(p), "ns/req");
        figure("in_process_cached_hit_ns", summarize(c), "ns/req");
        figure("in_process_hit_overhead_ns", summarize(diff), "ns/req");
    }
    let mut scenarios = start_servers();
    // `HTTP_BENCH_ONLY=cached_hit` (say) runs one scenario, e.g. under a profiler; `none`
    // stops after the in-process figures.
    if let Ok(only) = std::env::var("HTTP_BENCH_ONLY") {
        scenarios.retain(|s| s.name == only);
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    // Warm-up: fills the cache, opens the code paths.
    for s in &scenarios {
        measure(&client, *s, false);
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    for round in 0..ROUNDS {
        for (i, s) in scenarios.iter().enumerate() {
            let r = measure(&client, *s, true);
            println!("#      round {round} {}: {r:.0} req/s", s.name);
            rps[i].push(r);
        }
    }
    let ratio =
        |a: usize, b: usize| summarize(rps[a].iter().zip(&rps[b]).map(|(x, y)| x / y).collect());
    for (i, s) in scenarios.iter().enumerate() {
        figure(
            &format!("{}_rps", s.name),
            summarize(rps[i].clone()),
            "req/s",
        );
    }
    if scenarios.len() == 4 {
        figure("cached_vs_plain", ratio(1, 0), "x");
        figure("slow_cached_vs_plain", ratio(3, 2), "x");
        // The most the slow ratio can be here: the cached slow server at best answers like
        // the plain fast one, so slow_cached_vs_plain <= plain_rps / slow_origin_plain_rps.
        figure("slow_ratio_ceiling", ratio(0, 2), "x");
        figure("slow_cached_vs_ceiling", ratio(3, 0), "x");
    }
}
