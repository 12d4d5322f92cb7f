//! The process-wide cache of `#[cached]` and `#[invalidate]` without `cache = …`: a clear
//! error before `stormcache::install`, the installed cache after it.
//!
//! One test in its own binary, because the process-wide cache is installed once per process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use stormcache::{cached, invalidate, Cache};

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "g:{n}", ttl = "1m")]
async fn global_fn(n: u32) -> u32 {
    LOADS.fetch_add(1, Ordering::SeqCst);
    n * 10
}

#[invalidate(keys = ["g:{n}"])]
async fn global_mutation(n: u32, ran: Arc<AtomicBool>) {
    let _ = n;
    ran.store(true, Ordering::SeqCst);
}

fn panic_message(error: tokio::task::JoinError) -> String {
    assert!(error.is_panic(), "{error}");
    match error.into_panic().downcast::<String>() {
        Ok(message) => *message,
        Err(other) => other
            .downcast::<&'static str>()
            .map(|s| (*s).to_owned())
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn before_install_the_error_says_what_to_do_then_the_installed_cache_is_used() {
    let message = panic_message(tokio::spawn(global_fn(1)).await.expect_err("not installed"));
    assert!(message.contains("`global_fn`"), "{message}");
    assert!(message.contains("stormcache::install(cache)"), "{message}");
    assert!(message.contains("cache = ..."), "{message}");
    assert_eq!(LOADS.load(Ordering::SeqCst), 0, "the body did not run");

    // A mutation refuses to run without its invalidation.
    let ran = Arc::new(AtomicBool::new(false));
    let message = panic_message(
        tokio::spawn(global_mutation(1, Arc::clone(&ran)))
            .await
            .expect_err("not installed"),
    );
    assert!(message.contains("`global_mutation`"), "{message}");
    assert!(!ran.load(Ordering::SeqCst), "the mutation did not run");

    let cache = Cache::builder("global")
        .build()
        .expect("valid configuration");
    stormcache::install(cache.clone()).expect("first install");
    assert!(
        stormcache::install(cache.clone()).is_err(),
        "installed once"
    );

    assert_eq!(global_fn(2).await, 20);
    assert_eq!(global_fn(2).await, 20);
    assert_eq!(LOADS.load(Ordering::SeqCst), 1);
    assert_eq!(cache.counters().l1_hits, 1, "the installed cache served it");
    global_mutation(2, Arc::clone(&ran)).await;
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(global_fn(2).await, 20);
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        2,
        "invalidated through the installed cache"
    );
}
