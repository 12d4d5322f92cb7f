//! Attribute macros for stormcache: `#[cached]`, `#[invalidate]`,
//! `#[derive(InvalidationRule)]` and `key!`.
//!
//! Use them through the `stormcache` crate (feature `macros`, on by default), not directly:
//! the expansions name `::stormcache`.
//!
//! The crate is laid out like `tracing-attributes`: this file holds only the entry points,
//! which parse their input and hand it to the matching expansion. The `parse` module reads
//! the arguments (every error points at the offending token), `template` checks key
//! templates at compile time with the core's rules, and `expand` writes the code: helpers
//! shared by several macros in `expand` itself, and one submodule per macro (`cached`,
//! `invalidate`, `rule`, `key`).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use syn::parse_macro_input;

mod expand;
mod parse;
mod template;

/// Read-through caching for an `async fn`: the function runs only when its result is
/// neither in the local store nor in Redis, and what it returns is cached.
///
/// ```
/// use stormcache::{cached, Cache};
///
/// #[cached(key = "user:groups:{user_id}", ttl = "15m")]
/// async fn user_groups(user_id: &str) -> Vec<String> {
///     println!("loading the groups of {user_id}"); // e.g. a database query
///     vec!["staff".to_owned()]
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// // Once, at start-up (add `.redis_url(...)` for Redis):
/// let _ = stormcache::install(Cache::builder("app").build()?);
///
/// assert_eq!(user_groups("alice").await, ["staff"]); // loads
/// assert_eq!(user_groups("alice").await, ["staff"]); // from the local store
/// # Ok(()) }
/// ```
///
/// # What is cached
/// The return type decides, by its name:
/// - `Result<T, E>` (or any alias named `Result`): only `Ok(T)` is cached; an `Err` is
///   returned as is and the next call runs the function again. With `stale_for`, a failing
///   call is answered with the expired value while it is inside its grace.
/// - `Option<T>`: `Some(T)` is cached; `None` is not, unless `cache_none`.
/// - any other `T`: every value is cached.
///
/// `T` must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`
/// (`stormcache::Cacheable`). Concurrent calls with the same key in one process run the
/// function once. While Redis is down the local store keeps answering; a sick Redis never
/// makes the call fail.
///
/// # Arguments
/// All are optional.
///
/// - **`key = "user:groups:{user_id}"`** — the key template. A placeholder names an argument
///   (`{user_id}`), a field of one (`{user.id}`, `{pair.0}`), or a field of `self`
///   (`{self.tenant}`); the value must implement `Display` and is escaped as
///   `stormcache::key::escape_into` does, so `*` or `:` in it cannot widen a pattern.
///   The literal parts are checked at compile time. Arguments the key does not name take no
///   part in it; an argument that only the key, a tag or the `cache` expression uses need not
///   appear in the body (it is not reported as unused). Without `key`, the key is the function's module path and name followed by
///   every argument (which must then all be `Display`; an argument that is the cache, as
///   in `cache = cache`, is left out), plus `Self`'s type name for a method — give a key
///   when entries must be shared between builds or services.
///
///   ```
///   # use stormcache::cached;
///   pub struct User { pub id: u64, pub name: String }
///
///   #[cached(key = "user:{user.id}:resources", ttl = "15m")]
///   async fn user_resources(user: &User, trace_id: u128) -> Vec<String> {
///       // `trace_id` is not in the key: calls that differ only by it share the entry.
///       # let _ = trace_id;
///       vec![format!("doc-of-{}", user.name)]
///   }
///   ```
/// - **`ttl = "15m"`** — time to live: a number and a unit (`ms`, `s`, `m`, `h`, `d`), or
///   a sum like `"1h30m"`. Without it, the class's TTL (or the cache's default).
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "resources:all", ttl = "12h")]
///   async fn all_resources() -> Vec<String> { vec!["doc-1".into()] }
///   ```
/// - **`class = "permissions"`** — the class of the entry (declared on the cache with
///   `stormcache::Class`); classes carry a TTL and a volatility that the outage policy
///   uses. An entry's identity is its class and its key.
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "user:groups:{user}", class = "permissions")]
///   async fn user_groups(user: &str) -> Vec<String> { vec![user.to_owned()] }
///   ```
/// - **`tags = ["user:{user_id}"]`** — tag templates, with the same placeholders;
///   invalidating a tag (`Cache::invalidate_tag`, `#[invalidate(tags = [...])]`) removes
///   every entry that carries it.
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "resources:{user_id}", tags = ["user:{user_id}", "resources"])]
///   async fn user_resources(user_id: &str) -> Vec<String> { vec![user_id.to_owned()] }
///   ```
/// - **`stale_for = "1h"`** — fail-safe grace (functions returning `Result` only): for this
///   long after the TTL, an expired value is kept, and served if the function fails.
///
///   ```
///   # use stormcache::cached;
///   # #[derive(Debug)] struct DbError;
///   #[cached(key = "price:{sku}", ttl = "1m", stale_for = "1h")]
///   async fn price(sku: &str) -> Result<u64, DbError> {
///       # let _ = sku;
///       Ok(1999)
///   }
///   ```
/// - **`distributed_lock = "5s"`** — distributed stampede protection: on a miss in both
///   stores, only the instance that takes the key's lock in Redis runs the function; the
///   others wait for its value. A holder that dies blocks the others for this long at most
///   (`stormcache::EntryOptions::distributed_lock`).
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "report:{year}", ttl = "1h", distributed_lock = "30s")]
///   async fn yearly_report(year: u16) -> String { format!("report {year}") }
///   ```
/// - **`ttl_jitter = "10%"`** — each stored entry's TTL is randomly up to this much shorter
///   (a percentage of the TTL, or a duration such as `"30s"`), so that entries written
///   together do not expire together (`stormcache::EntryOptions::ttl_jitter`).
/// - **`local_ttl = "30s"`** — the local copy expires after this long at most, while Redis
///   keeps the entry for its full TTL; the next read then comes from Redis
///   (`stormcache::EntryOptions::local_ttl`).
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "catalog:{id}", ttl = "1h", ttl_jitter = "10%", local_ttl = "1m")]
///   async fn catalog_entry(id: u32) -> String { format!("entry {id}") }
///   ```
/// - **`eager_refresh = "80%"`** — a hit in the last 20 % of the entry's TTL is served and
///   also reloads the value in the background, once per key at a time, so a hot key never
///   expires under load (`stormcache::EntryOptions::eager_refresh`). The reload runs after
///   the call has returned, so the function takes its arguments by value (`String`, not
///   `&str`) and is not a method; the compiler says so otherwise. With it, a
///   `soft_timeout` answers every caller with the stale value while the load finishes in
///   the background.
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "price:{sku}", ttl = "1m", eager_refresh = "80%")]
///   async fn price(sku: String) -> u64 { sku.len() as u64 }
///   ```
/// - **`soft_timeout = "100ms"`** — with a stale value at hand (an expired entry inside its
///   `stale_for` grace), callers get the stale value after this long and the function's
///   result is stored when it comes (`stormcache::EntryOptions::soft_timeout`). When the
///   function takes its arguments by value, that holds for every caller: the run goes on in
///   the background. When it borrows (`&str`, `&self`), the caller running it waits for it.
/// - **`hard_timeout = "2s"`** — callers stop waiting for the function after this long:
///   they get the stale value if the grace allows, else (for functions returning `Result`)
///   `Err(stormcache::LoadTimeout.into())`, so the error type implements
///   `From<stormcache::LoadTimeout>`; `Option` functions answer `None`, and functions
///   returning a plain value wait (`stormcache::EntryOptions::hard_timeout`).
///
///   ```
///   # use stormcache::cached;
///   #[derive(Debug, thiserror::Error)]
///   enum DbError {
///       #[error(transparent)]
///       TimedOut(#[from] stormcache::LoadTimeout),
///   }
///
///   #[cached(key = "price:{sku}", ttl = "1m", stale_for = "1h", soft_timeout = "100ms", hard_timeout = "2s")]
///   async fn price(sku: &str) -> Result<u64, DbError> {
///       # let _ = sku;
///       Ok(1999)
///   }
///   ```
/// - **`cache = <expr>`** — which `stormcache::Cache` to use: `self.cache`, a `static`
///   (`LazyLock<Cache>`), a function returning `&Cache`, an argument of type `Cache`,
///   `&Cache` or `Arc<Cache>`… Anything that dereferences to a `Cache`. Without it, the
///   process-wide cache installed with `stormcache::install`.
///
///   ```
///   # use stormcache::{cached, Cache};
///   pub struct Directory {
///       cache: Cache,
///   }
///
///   impl Directory {
///       #[cached(key = "user:groups:{user}", ttl = "15m", cache = self.cache)]
///       pub async fn user_groups(&self, user: &str) -> Vec<String> {
///           vec![format!("{user}-group")]
///       }
///   }
///   ```
/// - **`cache_none`** (or `cache_none = true`) — for `Option<T>`: cache `None` too
///   (negative caching).
///
///   ```
///   # use stormcache::cached;
///   #[cached(key = "user:{id}:avatar", ttl = "5m", cache_none)]
///   async fn avatar(id: u64) -> Option<String> { (id == 1).then(|| "a.png".to_owned()) }
///   ```
/// - **`companions = false`** — do not generate the companion functions below (needed in
///   a trait `impl`, where extra methods are not allowed).
///
///   ```
///   # use stormcache::{cached, Cache};
///   trait Users {
///       async fn name(&self, id: u64) -> Option<String>;
///   }
///
///   struct Db { cache: Cache }
///
///   impl Users for Db {
///       #[cached(key = "user:{id}:name", cache = self.cache, companions = false)]
///       async fn name(&self, id: u64) -> Option<String> { Some(format!("user-{id}")) }
///   }
///   ```
///
/// # Companions: bypass, refresh, key, invalidate
/// Next to `name`, the macro writes four functions with the same visibility (methods when
/// `name` is a method):
///
/// | function | what it does |
/// |---|---|
/// | `name_no_cache(args…)` | runs the body; the cache is neither read nor written |
/// | `name_refresh(args…)` | runs the body and writes its (cacheable) result, replacing the entry |
/// | `name_key(key args…) -> Key` | the key a call with these arguments uses |
/// | `name_invalidate(key args…)` | removes that entry, locally and in Redis |
///
/// `name_key` and `name_invalidate` take only the arguments the key names (and those the
/// `cache` expression uses), in the order of the signature.
///
/// ```
/// use stormcache::{cached, Cache};
///
/// #[cached(key = "user:groups:{user}", ttl = "15m")]
/// async fn user_groups(user: &str, db_hint: u8) -> Vec<String> {
///     # let _ = db_hint;
///     vec![format!("{user}@{}", std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos())]
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// # let _ = stormcache::install(Cache::builder("companions").build()?);
/// let cached = user_groups("bob", 0).await;
/// assert_eq!(user_groups("bob", 0).await, cached);          // a hit
/// assert_ne!(user_groups_no_cache("bob", 0).await, cached); // bypass: runs the body
/// let fresh = user_groups_refresh("bob", 0).await;          // runs it and caches the result
/// assert_eq!(user_groups("bob", 0).await, fresh);
/// assert_eq!(user_groups_key("bob").as_str(), "user:groups:bob");
/// user_groups_invalidate("bob").await;                      // the next call loads again
/// assert_ne!(user_groups("bob", 0).await, fresh);
/// # Ok(()) }
/// ```
///
/// # Methods and generics
/// `&self` methods work as they are; the body keeps its `?`, `return` and borrows.
/// Generic functions work as long as the result type is cacheable. With a by-value or
/// `&mut` receiver, `cache = self.cache` is taken as an owned handle (one reference
/// count) so the body stays free to use `self`.
///
/// # Panics
/// Without `cache = …`, calling the function before `stormcache::install` panics with a
/// message saying so: a start-up mistake, found on the first call.
///
/// # Errors at compile time
/// An unknown placeholder, a non-`async` function, a bad duration or class name, an unknown
/// argument and a `cache` expression of the wrong type are reported at the token at fault.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(args as parse::CachedArgs);
    let item = parse_macro_input!(item as syn::ItemFn);
    expand::cached(args, item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Invalidation after a mutating `async fn`: when it succeeds, the entries it made stale
/// are removed from the local store and from Redis. Stack it as often as you like.
///
/// Removing a user from a group makes the user's groups *and* the resources derived from
/// them stale. Two reusable rules, each stated once, say so:
///
/// ```
/// use stormcache::{invalidate, InvalidationRule};
///
/// /// The user's group memberships changed.
/// #[derive(InvalidationRule)]
/// #[invalidates(keys = ["user:groups:{user_id}"])]
/// struct UserGroups<'a> {
///     user_id: &'a str,
/// }
///
/// /// What the user may see changed.
/// #[derive(InvalidationRule)]
/// #[invalidates(keys = ["resources:{user_id}"])]
/// struct UserResources<'a> {
///     user_id: &'a str,
/// }
///
/// #[invalidate(UserResources { user_id })]
/// #[invalidate(UserGroups { user_id })]
/// async fn remove_user_from_group(user_id: &str, group_id: &str) -> Result<(), String> {
///     // ... business logic ...
///     # let _ = (user_id, group_id);
///     Ok(())
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// # let _ = stormcache::install(stormcache::Cache::builder("rules").build()?);
/// # remove_user_from_group("alice", "admins").await.unwrap();
/// # Ok(()) }
/// ```
///
/// # When it runs
/// After the function returns: on `Ok` when it returns a `Result`, on any value otherwise.
/// An `Err` (or a panic) invalidates nothing. All the `#[invalidate]` attributes stacked on
/// one function are gathered into a single invalidation per cache.
///
/// A failed invalidation (Redis down) never turns the successful call into an error: the
/// local store is cleaned at once and the Redis half goes to the cache's outage journal,
/// replayed when Redis is back. Inside a Tokio runtime the invalidation runs as a task the
/// function awaits, so a caller that drops the future after the body ran (a timeout) does
/// not cancel it.
///
/// # Arguments
/// Any number of these, in any order:
///
/// - **a rule** — any expression whose type implements `stormcache::InvalidationRule`,
///   usually a struct literal built from the arguments: `UserGroups { user_id }`. Derive the
///   trait with [`InvalidationRule`](derive@InvalidationRule) or implement it by hand.
///
///   ```
///   # use stormcache::{invalidate, Invalidation, InvalidationRule, Key};
///   struct Everything;
///   impl InvalidationRule for Everything {
///       fn add_to(&self, inv: &mut Invalidation) {
///           *inv = std::mem::take(inv).everything();
///       }
///   }
///
///   #[invalidate(Everything)]
///   async fn reimport_catalogue() {}
///   ```
/// - **`keys = ["user:groups:{user_id}", ...]`** — key templates, with placeholders as in
///   `#[cached]` (arguments, their fields, fields of `self`). A key is removed in every class.
///
///   ```
///   # use stormcache::invalidate;
///   #[invalidate(keys = ["user:groups:{user_id}", "resources:{user_id}"])]
///   async fn remove_user_from_group(user_id: &str, group_id: &str) {
///       # let _ = (user_id, group_id);
///   }
///   ```
/// - **`tags = ["user:{user_id}"]`** — every entry carrying one of these tags.
///
///   ```
///   # use stormcache::invalidate;
///   #[invalidate(tags = ["user:{user.id}"])]
///   async fn rename_user(user: &User, name: &str) -> Result<(), String> {
///       # let _ = name;
///       Ok(())
///   }
///   # struct User { id: u64 }
///   ```
/// - **`class = "sessions"`** (or a list, `class = ["sessions", "permissions"]`) — every
///   entry of the class.
///
///   ```
///   # use stormcache::invalidate;
///   #[invalidate(class = "sessions")]
///   async fn rotate_signing_key() -> Result<(), String> { Ok(()) }
///   ```
/// - **`cache = <expr>`** — the cache, as in `#[cached]`; the process-wide one by default.
///
///   ```
///   # use stormcache::{invalidate, Cache};
///   struct Groups { cache: Cache }
///   impl Groups {
///       #[invalidate(keys = ["user:groups:{user}"], cache = self.cache)]
///       async fn add_member(&self, user: &str, group: &str) { let _ = (user, group); }
///   }
///   ```
/// - **`double_delete`** (or `double_delete = true`) — invalidate before the function runs
///   as well as after it. A reader that misses between the two deletes may load the old
///   value (the write is not committed yet) and cache it; the second delete removes it, so
///   that stale value does not outlive the call.
///
///   ```
///   # use stormcache::invalidate;
///   #[invalidate(keys = ["user:groups:{user}"], double_delete)]
///   async fn leave_group(user: &str, group: &str) -> Result<(), String> {
///       # let _ = (user, group);
///       Ok(())
///   }
///   ```
///
/// # Panics
/// Without `cache = …`, calling the function before `stormcache::install` panics before
/// the body runs, so a mutation is never left without its invalidation.
#[proc_macro_attribute]
pub fn invalidate(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(args as parse::InvalidateArgs);
    let item = parse_macro_input!(item as syn::ItemFn);
    expand::invalidate(args, item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A reusable invalidation rule: a struct whose fields fill the templates of the keys, tags
/// and classes it names in `#[invalidates(...)]`.
///
/// ```
/// use stormcache::{Invalidation, InvalidationRule};
///
/// #[derive(InvalidationRule)]
/// #[invalidates(keys = ["user:groups:{user_id}", "resources:{user_id}"])]
/// #[invalidates(tags = ["user:{user_id}"], class = "sessions")]
/// struct UserChanged<'a> {
///     user_id: &'a str,
/// }
///
/// let inv = Invalidation::new().rule(&UserChanged { user_id: "alice" });
/// assert!(!inv.is_empty());
/// ```
///
/// `#[invalidates]` takes `keys = [...]`, `tags = [...]` and `class = "..."` (or a list),
/// may be repeated, and its placeholders name fields (`{user_id}`, `{user.id}`, or `{0}` in
/// a tuple struct). Use the rule in `#[invalidate(UserChanged { user_id })]`, in
/// `Invalidation::rule`, or anywhere an `InvalidationRule` goes.
#[proc_macro_derive(InvalidationRule, attributes(invalidates))]
pub fn derive_invalidation_rule(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as syn::DeriveInput);
    expand::derive_rule(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A [`Key`](https://docs.rs/stormcache/latest/stormcache/struct.Key.html) from a template
/// checked at compile time, with its values escaped.
///
/// Placeholders work as in `format!`: `{name}` (or `{user.id}`) takes a variable in scope
/// or a named argument, `{}` the next positional argument and `{0}` one by index. Literal
/// parts may hold printable ASCII except `% * ? [ ] ^ { } \` and whitespace; every value is
/// escaped (`stormcache::key::escape_into`), so it cannot add glob characters, separators
/// or whitespace.
///
/// ```
/// use stormcache::key;
///
/// let user = "eve*";
/// let group = 7;
/// assert_eq!(key!("user:{user}:group:{}", group).as_str(), "user:eve%2A:group:7");
/// assert_eq!(key!("resources:all").as_str(), "resources:all");
/// assert_eq!(key!("a:{id}:{0}", "x", id = 1).as_str(), "a:1:x");
/// ```
///
/// A template such as `"user:*"` does not compile.
#[proc_macro]
pub fn key(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as parse::KeyInput);
    expand::key(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
