//! `examples/service_functions.rs` (seed 002's multi-layer case) in local-only mode: the
//! example's own `main` succeeds, and after `remove_user_from_group` the next
//! `user_resources` call reflects the removal while `resources:all` stays cached.
//!
//! The same on real Redis: `macros_example_redis.rs`.

#[allow(dead_code)]
#[path = "../examples/service_functions.rs"]
mod service_functions;

use std::sync::atomic::Ordering;

use service_functions::{db, remove_user_from_group, user_groups, user_resources};

#[test]
fn seed_002_removal_is_reflected_local_only() {
    // The example as a user runs it, without REDIS_URL (this binary's only test).
    std::env::remove_var("REDIS_URL");
    service_functions::main().expect("the example exits successfully");

    // The same functions, step by step, on the local-only cache `main` installed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = stormcache::global().expect("installed by main");
        assert!(!cache.has_redis());
        cache.flush_all().await;
        db::seed();
        let queries = || db::QUERIES.load(Ordering::SeqCst);
        let start = queries();

        let before = user_resources("alice").await.expect("loaded");
        assert_eq!(before, ["roadmap", "prod-db"]);
        assert_eq!(queries() - start, 2, "resources and alice's groups");
        assert_eq!(user_resources("alice").await.expect("cached"), before);
        assert_eq!(queries() - start, 2, "served from the cache");

        assert!(remove_user_from_group("alice", "admins")
            .await
            .expect("removed"));
        let after_mutation = queries();

        let after = user_resources("alice").await.expect("reloaded");
        assert_eq!(after, ["roadmap"], "the removal is reflected at once");
        assert_eq!(user_groups("alice").await.expect("cached"), ["staff"]);
        assert_eq!(
            queries() - after_mutation,
            1,
            "only alice's groups were queried again: resources:all stayed cached"
        );

        // A change behind the cache's back (no #[invalidate]) is not seen before the TTL:
        // that is what the rules are for.
        db::seed();
        assert_eq!(
            user_resources("alice").await.expect("cached"),
            ["roadmap"],
            "still cached"
        );
    });
}
