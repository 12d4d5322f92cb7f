//! `#[cached]`, `#[invalidate]`, `#[derive(InvalidationRule)]` and `key!` on local-only
//! caches (no Redis configured): what is cached and what is not, keys and their escaping,
//! methods and generics, companions, stacked invalidation and reusable rules.
//!
//! The same macros on real Redis are in `macros_redis.rs`; the process-wide cache (and the
//! error before it is installed) in `macros_global.rs`; compile errors in `macros_ui.rs`.

mod support;

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use stormcache::{
    cached, invalidate, key, Cache, EntryOptions, Invalidation, InvalidationRule, Key,
};
use support::caches::with_permissions_and_resources;

fn new_cache(namespace: &str) -> Cache {
    with_permissions_and_resources(Cache::builder(namespace))
        .build()
        .expect("valid configuration")
}

/// Each test uses its own functions and its own cache, so they can run in parallel.
macro_rules! test_cache {
    ($name:ident, $ns:literal) => {
        static $name: LazyLock<Cache> = LazyLock::new(|| new_cache($ns));
    };
}

// ---------------------------------------------------------------------------------------
// What is cached

test_cache!(VALUES, "values");
static VALUE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "value:{user}", ttl = "15m", cache = VALUES)]
async fn value_fn(user: &str, ignored: u32) -> Vec<String> {
    VALUE_CALLS.fetch_add(1, Ordering::SeqCst);
    vec![format!("{user}:{ignored}")]
}

#[tokio::test]
async fn plain_values_are_cached_and_unnamed_arguments_take_no_part() {
    assert_eq!(value_fn("ann", 1).await, ["ann:1"]);
    assert_eq!(
        value_fn("ann", 2).await,
        ["ann:1"],
        "`ignored` is not in the key"
    );
    assert_eq!(VALUE_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(value_fn("bob", 2).await, ["bob:2"]);
    assert_eq!(VALUE_CALLS.load(Ordering::SeqCst), 2);
    let c = VALUES.counters();
    assert_eq!((c.l1_hits, c.loader_calls), (1, 2));
}

test_cache!(RESULTS, "results");
static RESULT_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, PartialEq)]
enum DbError {
    Down,
    Parse(String),
}

impl From<std::num::ParseIntError> for DbError {
    fn from(e: std::num::ParseIntError) -> Self {
        DbError::Parse(e.to_string())
    }
}

/// Uses `?` with a `From` conversion and an early `return`, as service code does.
#[cached(key = "parsed:{text}", cache = RESULTS)]
async fn parse_fn(text: &str, fail: bool) -> Result<u64, DbError> {
    RESULT_CALLS.fetch_add(1, Ordering::SeqCst);
    if fail {
        return Err(DbError::Down);
    }
    let n: u64 = text.parse()?;
    Ok(n * 2)
}

#[tokio::test]
async fn only_ok_is_cached() {
    assert_eq!(parse_fn("21", true).await, Err(DbError::Down));
    assert_eq!(parse_fn("21", false).await, Ok(42), "an Err was not cached");
    assert_eq!(parse_fn("21", true).await, Ok(42), "Ok was cached");
    assert!(matches!(parse_fn("x", false).await, Err(DbError::Parse(_))));
    assert_eq!(RESULT_CALLS.load(Ordering::SeqCst), 3);
}

test_cache!(OPTIONS, "options");
static OPTION_CALLS: AtomicUsize = AtomicUsize::new(0);
static NONE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "maybe:{id}", cache = OPTIONS)]
async fn maybe_fn(id: u64) -> Option<String> {
    OPTION_CALLS.fetch_add(1, Ordering::SeqCst);
    (id % 2 == 0).then(|| format!("even-{id}"))
}

#[cached(key = "negative:{id}", cache = OPTIONS, cache_none)]
async fn negative_fn(id: u64) -> Option<String> {
    NONE_CALLS.fetch_add(1, Ordering::SeqCst);
    (id % 2 == 0).then(|| format!("even-{id}"))
}

#[tokio::test]
async fn none_is_not_cached_unless_asked() {
    assert_eq!(maybe_fn(1).await, None);
    assert_eq!(maybe_fn(1).await, None);
    assert_eq!(
        OPTION_CALLS.load(Ordering::SeqCst),
        2,
        "None was not cached"
    );
    assert_eq!(maybe_fn(2).await.as_deref(), Some("even-2"));
    assert_eq!(maybe_fn(2).await.as_deref(), Some("even-2"));
    assert_eq!(OPTION_CALLS.load(Ordering::SeqCst), 3, "Some was cached");

    assert_eq!(negative_fn(1).await, None);
    assert_eq!(negative_fn(1).await, None);
    assert_eq!(
        NONE_CALLS.load(Ordering::SeqCst),
        1,
        "cache_none caches None"
    );
}

test_cache!(UNIT, "unit");
static UNIT_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "warm-up", cache = UNIT)]
async fn warm_up() {
    UNIT_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn unit_results_are_cached_too() {
    warm_up().await;
    warm_up().await;
    assert_eq!(UNIT_CALLS.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Options: TTL, class, tags, fail-safe grace

test_cache!(TTLS, "ttls");
static TTL_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "short", ttl = "150ms", cache = TTLS)]
async fn short_lived() -> usize {
    TTL_CALLS.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test]
async fn ttl_expires_entries() {
    assert_eq!(short_lived().await, 1);
    assert_eq!(short_lived().await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(short_lived().await, 2, "expired after its TTL");
}

test_cache!(SHAPED, "shaped");
static SHAPED_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "shaped", ttl = "1h", ttl_jitter = "10%", local_ttl = "150ms", cache = SHAPED)]
async fn shaped() -> usize {
    SHAPED_CALLS.fetch_add(1, Ordering::SeqCst) + 1
}

#[cached(key = "jittered", ttl = "1h", ttl_jitter = "5m", cache = SHAPED)]
async fn jittered() -> usize {
    7
}

#[tokio::test]
async fn local_ttl_and_jitter_arguments_reach_the_options() {
    let started = std::time::Instant::now();
    assert_eq!(shaped().await, 1);
    assert_eq!(shaped().await, 1);
    // No Redis here: once the local copy expires, the function runs again.
    let deadline = started + Duration::from_secs(5);
    while shaped().await == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "never expired locally"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_eq!((jittered().await, jittered().await), (7, 7));
}

test_cache!(CLASSES, "classes");
static CLASS_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "user:groups:{user}", class = "permissions", tags = ["user:{user}"], cache = CLASSES)]
async fn classy(user: &str) -> usize {
    let _ = user;
    CLASS_CALLS.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test]
async fn class_and_tags_reach_the_entry() {
    assert_eq!(classy("ann").await, 1);
    assert_eq!(classy("ann").await, 1);
    CLASSES.flush_class("resources").await;
    assert_eq!(classy("ann").await, 1, "another class's flush leaves it");
    CLASSES.flush_class("permissions").await;
    assert_eq!(classy("ann").await, 2, "its class's flush removes it");
    CLASSES
        .invalidate_tag(&Key::builder("user:").value("bob").build())
        .await;
    assert_eq!(classy("ann").await, 2, "another user's tag leaves it");
    CLASSES.invalidate_tag(&key!("user:{}", "ann")).await;
    assert_eq!(classy("ann").await, 3, "its tag removes it");
}

test_cache!(STALE, "stale");
static STALE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "price:{sku}", ttl = "100ms", stale_for = "1h", cache = STALE)]
async fn price(sku: &str, fail: bool) -> Result<u64, String> {
    let n = STALE_CALLS.fetch_add(1, Ordering::SeqCst) as u64;
    if fail {
        Err(format!("{sku}: database down"))
    } else {
        Ok(100 + n)
    }
}

#[tokio::test]
async fn stale_for_serves_the_expired_value_when_the_function_fails() {
    assert_eq!(price("p1", false).await, Ok(100));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        price("p1", true).await,
        Ok(100),
        "stale value inside its grace"
    );
    assert_eq!(price("p1", false).await, Ok(102), "a success replaces it");
    assert_eq!(
        price("p2", true).await,
        Err("p2: database down".to_owned()),
        "no stale value: the error"
    );
    assert_eq!(STALE.counters().stale_served, 1);
}

// ---------------------------------------------------------------------------------------
// Keys

test_cache!(KEYS, "keys");

pub struct User {
    pub id: u64,
    pub name: String,
}

#[cached(key = "user:{user.id}:pair:{pair.0}", cache = KEYS, ttl = "1m")]
async fn field_key(user: &User, pair: (String, u8)) -> String {
    format!("{}-{}", user.name, pair.1)
}

#[cached(key = "escaped:{user}", cache = KEYS)]
async fn escaped(user: &str) -> String {
    user.to_owned()
}

#[cached(cache = KEYS)]
async fn default_key(a: u32, b: &str) -> String {
    format!("{a}{b}")
}

/// The cache passed as an argument says where to cache, not what: the default key leaves it
/// out, and the body need not use it (nor `id`, which only the key uses).
#[cached(cache = cache)]
async fn cache_argument(cache: &Cache, id: u32) -> u32 {
    7
}

#[tokio::test]
async fn keys_name_arguments_and_fields_and_escape_values() {
    let user = User {
        id: 7,
        name: "ann".into(),
    };
    assert_eq!(field_key(&user, ("x".into(), 1)).await, "ann-1");
    assert_eq!(
        field_key(&user, ("x".into(), 2)).await,
        "ann-1",
        "pair.1 is not in the key"
    );
    assert_eq!(
        field_key_key(&user, ("x".into(), 0)).as_str(),
        "user:7:pair:x"
    );

    // A hostile value cannot widen a pattern or add a segment.
    assert_eq!(escaped_key("eve*:admin").as_str(), "escaped:eve%2A%3Aadmin");
    assert_eq!(escaped("eve*:admin").await, "eve*:admin");
    assert_eq!(
        escaped("eve*").await,
        "eve*",
        "a different key from `eve*:admin`"
    );

    // Without `key`: the function's path and every argument.
    assert_eq!(default_key_key(1, "b").as_str(), "macros::default_key:1:b");
    assert_eq!(default_key(1, "b").await, "1b");
    assert_eq!(
        cache_argument_key(&KEYS, 3).as_str(),
        "macros::cache_argument:3"
    );
    assert_eq!(cache_argument(&KEYS, 3).await, 7);
    let stored = cache_argument_key(&KEYS, 3);
    assert_eq!(
        KEYS.get::<u32>(&stored, &EntryOptions::new()).await,
        Some(7)
    );
}

#[test]
fn key_macro_checks_literals_at_compile_time_and_escapes_values() {
    let user = "eve*";
    let group = 7;
    assert_eq!(
        key!("user:{user}:group:{}", group).as_str(),
        "user:eve%2A:group:7"
    );
    assert_eq!(
        key!("resources:all"),
        Key::literal("resources:all").expect("valid")
    );
    assert_eq!(
        key!("a:{id}:{0}:{1}:{0}", "x", "y", id = 1).as_str(),
        "a:1:x:y:x"
    );
    let u = User {
        id: 9,
        name: "n".into(),
    };
    assert_eq!(key!("user:{u.id}:{u.name}").as_str(), "user:9:n");
    // The same result as the builder and the run-time template.
    let built = Key::builder("user:")
        .value(user)
        .literal(":group:")
        .value(group)
        .build();
    assert_eq!(key!("user:{user}:group:{group}"), built);
    let rendered = stormcache::KeyTemplate::parse("user:{user}:group:{group}")
        .expect("valid")
        .render(&[("user", &user as &dyn Display), ("group", &group)])
        .expect("rendered");
    assert_eq!(key!("user:{user}:group:{group}"), rendered);
    // Arguments are evaluated once each, in order.
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    assert_eq!(key!("{0}:{0}:{1}", next(), next()).as_str(), "1:1:2");
}

// ---------------------------------------------------------------------------------------
// Methods, generics, receivers

struct Directory {
    cache: Cache,
    tenant: String,
    loads: AtomicUsize,
}

impl Directory {
    #[cached(key = "{self.tenant}:groups:{user}", ttl = "15m", cache = self.cache)]
    async fn groups(&self, user: &str) -> Result<Vec<String>, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if user.is_empty() {
            return Err("no user".into());
        }
        Ok(vec![format!("{}/{user}", self.tenant)])
    }

    /// An associated function without `self`.
    #[cached(key = "static:{n}", cache = STATICS)]
    async fn doubled(n: u32) -> u32 {
        n * 2
    }

    /// A `&mut self` method: the cache handle is owned so the body may borrow `self` mutably.
    #[cached(key = "mut:{n}", cache = self.cache)]
    async fn counted(&mut self, n: u32) -> u32 {
        self.tenant.push('!');
        n + 1
    }

    /// A by-value receiver.
    #[cached(key = "arc:{n}", cache = self.cache)]
    async fn by_arc(self: Arc<Self>, n: u32) -> String {
        format!("{}:{n}", self.tenant)
    }
}

test_cache!(STATICS, "statics");

#[tokio::test]
async fn methods_use_self_in_keys_and_as_the_cache() {
    let dir = Directory {
        cache: new_cache("methods"),
        tenant: "acme".into(),
        loads: AtomicUsize::new(0),
    };
    assert_eq!(dir.groups("ann").await, Ok(vec!["acme/ann".to_owned()]));
    assert_eq!(dir.groups("ann").await, Ok(vec!["acme/ann".to_owned()]));
    assert_eq!(dir.groups("").await, Err("no user".to_owned()));
    assert_eq!(dir.loads.load(Ordering::SeqCst), 2);
    assert_eq!(dir.groups_key("ann").as_str(), "acme:groups:ann");
    assert_eq!(dir.cache.counters().l1_hits, 1);

    assert_eq!(Directory::doubled(4).await, 8);
    assert_eq!(Directory::doubled_key(4).as_str(), "static:4");

    let mut dir = dir;
    assert_eq!(dir.counted(1).await, 2);
    assert_eq!(dir.counted(1).await, 2);
    assert_eq!(dir.tenant, "acme!", "the body ran once");

    let dir = Arc::new(dir);
    assert_eq!(Arc::clone(&dir).by_arc(3).await, "acme!:3");
}

test_cache!(GENERICS, "generics");
static GENERIC_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "describe:{id}", cache = GENERICS)]
async fn describe<I, L>(id: I, label: L) -> String
where
    I: Display + Send,
    L: AsRef<str>,
{
    GENERIC_CALLS.fetch_add(1, Ordering::SeqCst);
    format!("{}#{id}", label.as_ref())
}

#[cached(key = "impl:{id}", cache = GENERICS)]
async fn with_impl_arg(id: impl Display) -> String {
    id.to_string()
}

#[tokio::test]
async fn generic_functions() {
    assert_eq!(describe(1u8, "a").await, "a#1");
    assert_eq!(
        describe("1", String::from("b")).await,
        "a#1",
        "same key, other types"
    );
    assert_eq!(GENERIC_CALLS.load(Ordering::SeqCst), 1);
    // `describe_key` keeps only `I`, which its argument needs.
    assert_eq!(describe_key(5u64).as_str(), "describe:5");
    assert_eq!(with_impl_arg(3).await, "3");
}

// ---------------------------------------------------------------------------------------
// Companions

test_cache!(COMPANIONS, "companions");
static COMPANION_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "counter:{name}", cache = COMPANIONS)]
async fn counter(name: &str) -> Result<usize, String> {
    let n = COMPANION_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if name == "bad" {
        Err("bad".into())
    } else {
        Ok(n)
    }
}

#[tokio::test]
async fn companions_bypass_refresh_and_invalidate() {
    assert_eq!(counter("a").await, Ok(1));
    assert_eq!(counter("a").await, Ok(1));
    assert_eq!(counter_no_cache("a").await, Ok(2), "bypass runs the body");
    assert_eq!(counter("a").await, Ok(1), "and leaves the cache alone");
    assert_eq!(counter_refresh("a").await, Ok(3), "refresh runs the body");
    assert_eq!(counter("a").await, Ok(3), "and caches its result");
    assert_eq!(counter_refresh("bad").await, Err("bad".into()));
    counter_invalidate("a").await;
    assert_eq!(counter("a").await, Ok(5), "invalidated: loaded again");
    assert_eq!(counter_key("a"), key!("counter:{}", "a"));
}

// ---------------------------------------------------------------------------------------
// Invalidation

test_cache!(INV, "invalidation");

#[derive(InvalidationRule)]
#[invalidates(keys = ["user:groups:{user_id}"])]
struct UserGroups<'a> {
    user_id: &'a str,
}

#[derive(InvalidationRule)]
#[invalidates(keys = ["resources:{user_id}"])]
struct UserResources<'a> {
    user_id: &'a str,
}

static GROUP_LOADS: AtomicUsize = AtomicUsize::new(0);
static RESOURCE_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "user:groups:{user}", class = "permissions", cache = INV)]
async fn inv_groups(user: &str) -> usize {
    let _ = user;
    GROUP_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[cached(key = "resources:{user}", class = "resources", cache = INV)]
async fn inv_resources(user: &str) -> usize {
    let _ = user;
    RESOURCE_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[invalidate(UserResources { user_id }, cache = INV)]
#[invalidate(UserGroups { user_id }, cache = INV)]
async fn remove_user_from_group(user_id: &str, group_id: &str, fail: bool) -> Result<(), String> {
    if fail {
        return Err(format!("{user_id} is not in {group_id}"));
    }
    Ok(())
}

#[tokio::test]
async fn stacked_rules_run_after_ok_only() {
    assert_eq!((inv_groups("u1").await, inv_resources("u1").await), (1, 1));
    assert_eq!((inv_groups("u2").await, inv_resources("u2").await), (2, 2));

    assert!(remove_user_from_group("u1", "g", true).await.is_err());
    assert_eq!(
        (inv_groups("u1").await, inv_resources("u1").await),
        (1, 1),
        "Err: nothing invalidated"
    );

    remove_user_from_group("u1", "g", false)
        .await
        .expect("removed");
    assert_eq!(
        (inv_groups("u1").await, inv_resources("u1").await),
        (3, 3),
        "both rules ran"
    );
    assert_eq!(
        (inv_groups("u2").await, inv_resources("u2").await),
        (2, 2),
        "other users untouched"
    );
}

test_cache!(INV2, "invalidation2");
static KEYED_LOADS: AtomicUsize = AtomicUsize::new(0);
static TAGGED_LOADS: AtomicUsize = AtomicUsize::new(0);
static SESSION_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "profile:{id}", cache = INV2)]
async fn profile(id: u64) -> usize {
    let _ = id;
    KEYED_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[cached(key = "feed:{id}", tags = ["user:{id}"], cache = INV2)]
async fn feed(id: u64) -> usize {
    let _ = id;
    TAGGED_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[cached(key = "session:{id}", class = "permissions", cache = INV2)]
async fn session(id: u64) -> usize {
    let _ = id;
    SESSION_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

/// A non-`Result` function: invalidated after any return.
#[invalidate(keys = ["profile:{user.id}"], tags = ["user:{user.id}"], cache = INV2)]
#[stormcache::invalidate(class = "permissions", cache = INV2)]
async fn rename(user: &User) -> String {
    user.name.clone()
}

#[tokio::test]
async fn keys_tags_and_classes() {
    let user = User {
        id: 4,
        name: "dee".into(),
    };
    assert_eq!(
        (profile(4).await, feed(4).await, session(4).await),
        (1, 1, 1)
    );
    assert_eq!(rename(&user).await, "dee");
    assert_eq!(
        (profile(4).await, feed(4).await, session(4).await),
        (2, 2, 2)
    );
}

test_cache!(DD, "double-delete");
static DD_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "dd:{id}", cache = DD)]
async fn dd_read(id: u32) -> usize {
    let _ = id;
    DD_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

/// Seed 002's read race: a reader caches the old value while the write is in flight; the
/// second delete removes it.
#[invalidate(keys = ["dd:{id}"], cache = DD, double_delete)]
async fn dd_write(id: u32, seen_inside: &AtomicUsize) -> Result<(), ()> {
    // Inside the mutation the entry is already gone (first delete) ...
    let cached: Option<usize> = DD.get(&key!("dd:{id}"), &EntryOptions::new()).await;
    assert_eq!(cached, None);
    // ... and a concurrent reader fills it with what it read before the write lands.
    seen_inside.store(dd_read(id).await, Ordering::SeqCst);
    Ok(())
}

#[invalidate(keys = ["dd:{id}"], cache = DD)]
async fn single_write(id: u32, seen_inside: &AtomicUsize) -> Result<(), ()> {
    seen_inside.store(dd_read(id).await, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn double_delete_runs_before_and_after() {
    assert_eq!(dd_read(1).await, 1);
    let seen = AtomicUsize::new(0);
    dd_write(1, &seen).await.expect("written");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the first delete ran before the body"
    );
    assert_eq!(
        dd_read(1).await,
        3,
        "the second delete removed what the racing read cached"
    );

    single_write(1, &seen).await.expect("written");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "without double_delete the old entry is read inside"
    );
    assert_eq!(dd_read(1).await, 4);
}

#[derive(InvalidationRule)]
#[invalidates(keys = ["a:{0}", "b:{1.id}"])]
#[invalidates(tags = ["t:{0}"], class = ["permissions", "resources"])]
struct Tuple<'a>(u32, &'a User);

#[derive(InvalidationRule)]
#[invalidates(class = "sessions")]
struct Sessions;

#[derive(InvalidationRule)]
#[invalidates(keys = ["generic:{id}"])]
struct Generic<T: Display> {
    id: T,
}

#[test]
fn derived_rules_name_their_keys_tags_and_classes() {
    let user = User {
        id: 3,
        name: String::new(),
    };
    let inv = Invalidation::new().rule(&Tuple(1, &user));
    let expected = Invalidation::new()
        .key(key!("a:1"))
        .key(key!("b:3"))
        .tag(key!("t:1"))
        .class("permissions")
        .class("resources");
    assert_eq!(inv, expected);
    assert_eq!(
        Invalidation::new().rule(&Sessions),
        Invalidation::new().class("sessions")
    );
    assert_eq!(
        Invalidation::new().rule(&Generic { id: "x*" }),
        Invalidation::new().key(key!("generic:{}", "x*"))
    );
}

/// A rule written by hand, for what the derive does not cover.
struct AllVolatile;

impl InvalidationRule for AllVolatile {
    fn add_to(&self, inv: &mut Invalidation) {
        *inv = std::mem::take(inv).volatile_classes();
    }
}

test_cache!(HAND, "hand");
static HAND_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "perm:{id}", class = "permissions", cache = HAND)]
async fn perm(id: u8) -> usize {
    let _ = id;
    HAND_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[invalidate(AllVolatile, cache = HAND)]
async fn revoke_everything() {}

#[tokio::test]
async fn hand_written_rules_stack_like_derived_ones() {
    assert_eq!(perm(1).await, 1);
    revoke_everything().await;
    assert_eq!(perm(1).await, 2);
}

test_cache!(CANCEL, "cancel");
static CANCEL_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "c:{id}", cache = CANCEL)]
async fn cancel_read(id: u32) -> usize {
    let _ = id;
    CANCEL_LOADS.fetch_add(1, Ordering::SeqCst) + 1
}

#[invalidate(keys = ["c:{id}"], cache = CANCEL)]
async fn cancel_write(id: u32) -> Result<(), ()> {
    let _ = id;
    Ok(())
}

#[tokio::test]
async fn a_mutation_dropped_after_its_body_still_invalidates() {
    assert_eq!(cancel_read(1).await, 1);
    let mut mutation = Box::pin(cancel_write(1));
    // One poll: the body runs and the invalidation starts; then the caller gives up.
    let finished = tokio::select! {
        biased;
        _ = &mut mutation => true,
        () = std::future::ready(()) => false,
    };
    assert!(!finished, "the invalidation was still under way");
    drop(mutation);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        cancel_read(1).await,
        2,
        "the invalidation ran to completion anyway"
    );
}

// ---------------------------------------------------------------------------------------
// Concurrency

test_cache!(FLIGHTS, "flights");
static FLIGHT_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "slow:{id}", cache = FLIGHTS)]
async fn slow(id: u32) -> u32 {
    FLIGHT_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_run_the_function_once() {
    let calls: Vec<_> = (0..16).map(|_| tokio::spawn(slow(9))).collect();
    for call in calls {
        assert_eq!(call.await.expect("no panic"), 9);
    }
    assert_eq!(FLIGHT_LOADS.load(Ordering::SeqCst), 1);
}

/// A rule that is neither `Send` nor `Sync`: it is dropped before the first `.await`.
struct CellRule(std::cell::Cell<u8>);

impl InvalidationRule for CellRule {
    fn add_to(&self, inv: &mut Invalidation) {
        *inv = std::mem::take(inv).key(key!("cell:{}", self.0.get()));
    }
}

#[invalidate(CellRule(std::cell::Cell::new(n)), cache = HAND, double_delete)]
async fn with_cell_rule(n: u8) {}

/// The futures of cached functions are `Send` (they can be spawned), even for methods and
/// rules that are not `Send`.
#[test]
fn futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    let dir = Directory {
        cache: new_cache("send"),
        tenant: String::new(),
        loads: AtomicUsize::new(0),
    };
    is_send(&dir.groups("x"));
    is_send(&remove_user_from_group("a", "b", false));
    is_send(&counter_refresh("a"));
    is_send(&counter_invalidate("a"));
    is_send(&with_cell_rule(1));
}

test_cache!(REFRESHED, "macro-eager");
static REFRESH_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Owned arguments only: the refresh runs after the call has returned.
#[cached(key = "price:{sku}", ttl = "2s", eager_refresh = "50%", cache = REFRESHED)]
async fn hot_price(sku: String) -> u64 {
    let _ = sku;
    REFRESH_CALLS.fetch_add(1, Ordering::SeqCst) as u64
}

#[tokio::test]
async fn eager_refresh_reloads_a_hot_key_in_the_background_before_it_expires() {
    assert_eq!(hot_price("a".into()).await, 0);
    // Hits in the second half of the TTL are served as they are, and start one refresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while REFRESHED.counters().eager_refreshes == 0 {
        assert!(std::time::Instant::now() < deadline, "no eager refresh");
        assert_eq!(hot_price("a".into()).await, 0, "a hit waited for a reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refreshed value replaces the old one without a miss.
    while hot_price("a".into()).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(REFRESHED.counters().misses, 1, "only the first call missed");
}
