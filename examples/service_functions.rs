//! Three cache layers over one permissions model, written with the attribute macros.
//!
//! Three cached layers of different volatility feed one answer:
//!
//! | function | key | TTL | class |
//! |---|---|---|---|
//! | `all_resources()` | `resources:all` | 12 h | `resources` (stable) |
//! | `user_groups(user)` | `user:groups:{user}` | 15 min | `permissions` (volatile) |
//! | `user_resources(user)` | `resources:{user}` | 15 min | `permissions`, derived from both |
//!
//! and `remove_user_from_group(user, group)` declares what it makes stale with two reusable
//! rules, `UserResources` and `UserGroups`, stacked as two `#[invalidate]` attributes: removing
//! a user from a group makes the user's groups *and* the user's resources stale.
//!
//! ```text
//! cargo run --example service_functions                                   # local store only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example service_functions  # with Redis
//! ```
//!
//! `tests/macros_example.rs` and `tests/macros_example_redis.rs` run these same functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stormcache::{cached, invalidate, Cache, Class, InvalidationRule};

/// The origin: a tiny in-memory "database" that counts its queries.
pub mod db {
    use super::*;

    /// A resource and the groups allowed to see it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Resource {
        /// Its name.
        pub name: String,
        /// Groups whose members may see it.
        pub groups: Vec<String>,
    }

    /// What the database can fail with.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct DbError(pub String);

    impl std::fmt::Display for DbError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "database error: {}", self.0)
        }
    }

    impl std::error::Error for DbError {}

    struct Tables {
        resources: Vec<Resource>,
        memberships: BTreeMap<String, BTreeSet<String>>,
    }

    static TABLES: Mutex<Option<Tables>> = Mutex::new(None);
    /// Queries run so far (what the cache saves).
    pub static QUERIES: AtomicUsize = AtomicUsize::new(0);

    fn tables() -> MutexGuard<'static, Option<Tables>> {
        TABLES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fills the tables with the demo's data.
    pub fn seed() {
        let resource = |name: &str, groups: &[&str]| Resource {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        let member = |user: &str, groups: &[&str]| {
            (
                user.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            )
        };
        *tables() = Some(Tables {
            resources: vec![
                resource("payroll", &["finance"]),
                resource("roadmap", &["staff"]),
                resource("prod-db", &["admins"]),
            ],
            memberships: [
                member("alice", &["staff", "admins"]),
                member("bob", &["staff", "finance"]),
            ]
            .into_iter()
            .collect(),
        });
    }

    fn query<T>(what: String, f: impl FnOnce(&mut Tables) -> T) -> Result<T, DbError> {
        QUERIES.fetch_add(1, Ordering::SeqCst);
        println!("    db: {what}");
        match tables().as_mut() {
            Some(t) => Ok(f(t)),
            None => Err(DbError("not seeded".into())),
        }
    }

    /// `SELECT * FROM resources`.
    pub fn resources() -> Result<Vec<Resource>, DbError> {
        query("SELECT * FROM resources".into(), |t| t.resources.clone())
    }

    /// The groups of `user`.
    pub fn groups_of(user: &str) -> Result<Vec<String>, DbError> {
        query(
            format!("SELECT group FROM memberships WHERE user = {user:?}"),
            |t| {
                t.memberships
                    .get(user)
                    .map(|g| g.iter().cloned().collect())
                    .unwrap_or_default()
            },
        )
    }

    /// Removes `user` from `group`.
    pub fn remove_membership(user: &str, group: &str) -> Result<bool, DbError> {
        query(
            format!("DELETE FROM memberships WHERE user = {user:?} AND group = {group:?}"),
            |t| t.memberships.get_mut(user).is_some_and(|g| g.remove(group)),
        )
    }
}

use db::{DbError, Resource};

/// Every resource: metadata that rarely changes (12 h, stable class).
#[cached(key = "resources:all", ttl = "12h", class = "resources")]
pub async fn all_resources() -> Result<Vec<Resource>, DbError> {
    db::resources()
}

/// The groups of a user: changes more often and matters for security (15 min, volatile).
#[cached(key = "user:groups:{user}", ttl = "15m", class = "permissions", tags = ["user:{user}"])]
pub async fn user_groups(user: &str) -> Result<Vec<String>, DbError> {
    db::groups_of(user)
}

/// What a user may see: derived from the two above, so only as fresh as they are.
#[cached(key = "resources:{user}", ttl = "15m", class = "permissions", tags = ["user:{user}"])]
pub async fn user_resources(user: &str) -> Result<Vec<String>, DbError> {
    let all = all_resources().await?;
    let groups = user_groups(user).await?;
    Ok(all
        .into_iter()
        .filter(|r| r.groups.iter().any(|g| groups.contains(g)))
        .map(|r| r.name)
        .collect())
}

/// Rule: the group memberships of a user changed.
#[derive(InvalidationRule)]
#[invalidates(keys = ["user:groups:{user_id}"])]
pub struct UserGroups<'a> {
    /// The user.
    pub user_id: &'a str,
}

/// Rule: what a user may see changed.
#[derive(InvalidationRule)]
#[invalidates(keys = ["resources:{user_id}"])]
pub struct UserResources<'a> {
    /// The user.
    pub user_id: &'a str,
}

/// The mutation: it makes the user's groups and the resources derived from them stale, so
/// the two rules, stacked, run when it returns `Ok`.
#[invalidate(UserResources { user_id })]
#[invalidate(UserGroups { user_id })]
pub async fn remove_user_from_group(user_id: &str, group_id: &str) -> Result<bool, DbError> {
    db::remove_membership(user_id, group_id)
}

/// The cache the example installs: the two volatilities as classes, `permissions` (15 min,
/// volatile) and `resources` (12 h, stable).
pub fn build_cache(redis_url: Option<String>) -> Result<Cache, stormcache::Error> {
    Cache::builder("service-functions")
        .redis_url(redis_url)
        .class(
            Class::new("permissions")
                .ttl(Duration::from_secs(15 * 60))
                .volatile(),
        )
        .class(Class::new("resources").ttl(Duration::from_secs(12 * 3600)))
        .build()
}

/// Runs the demo against whatever cache is installed; returns alice's resources before and
/// after her removal from `admins`.
pub async fn demo() -> Result<(Vec<String>, Vec<String>), DbError> {
    db::seed();
    println!("1. alice's resources (cold cache: two queries)");
    let before = user_resources("alice").await?;
    println!("   -> {before:?}");

    println!("2. again (served from the cache: no query)");
    let again = user_resources("alice").await?;
    println!("   -> {again:?}");

    println!("3. bob's resources (resources:all is shared: one query for his groups)");
    println!("   -> {:?}", user_resources("bob").await?);

    println!(
        "4. remove alice from admins (#[invalidate(UserResources)] + #[invalidate(UserGroups)])"
    );
    let removed = remove_user_from_group("alice", "admins").await?;
    println!("   -> removed: {removed}");

    println!("5. alice's resources again (her two entries reload; resources:all stays cached)");
    let after = user_resources("alice").await?;
    println!("   -> {after:?}");

    println!("6. companions: the key, a bypass and a refresh");
    println!(
        "   user_resources_key(\"alice\") = {}",
        user_resources_key("alice")
    );
    println!(
        "   no_cache -> {:?}",
        user_resources_no_cache("alice").await?
    );
    println!(
        "   refresh  -> {:?}",
        user_resources_refresh("alice").await?
    );
    Ok((before, after))
}

#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let cache = build_cache(redis_url.clone())?;
    if let Some(url) = &redis_url {
        // Connected in the background; give it a moment, then start from a clean namespace.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !cache.redis_in_use() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "Redis at {url}: {}",
            if cache.redis_in_use() {
                "in use"
            } else {
                "not answering; local store only"
            }
        );
        cache.flush_all().await;
    } else {
        println!("no REDIS_URL: local store only");
    }
    let _ = stormcache::install(cache.clone());

    let (before, after) = demo().await?;
    let counters = cache.counters();
    println!(
        "queries: {}; cache: {} local hits, {} Redis hits, {} loads",
        db::QUERIES.load(Ordering::SeqCst),
        counters.l1_hits,
        counters.l2_hits,
        counters.loader_calls
    );
    if before.contains(&"prod-db".to_owned()) && !after.contains(&"prod-db".to_owned()) {
        println!("ok: the removal is reflected at once");
        Ok(())
    } else {
        Err(format!("stale answer after the removal: before {before:?}, after {after:?}").into())
    }
}
