//! Items the attribute macros expand to. Not a public API: nothing here follows semver.
//!
//! The expansions of `#[cached]`, `#[invalidate]`, `#[derive(InvalidationRule)]` and `key!`
//! call these, and otherwise only the public API. Everything goes through the same
//! [`Cache`] methods an application would call by hand.

use std::fmt::Display;
use std::future::Future;

use crate::{
    Cache, Cacheable, EntryOptions, Invalidation, InvalidationRule, Key, KeyBuilder, RedisOutcome,
};

/// The process-wide cache for a function given no `cache = …`.
///
/// # Panics
/// When [`install`](crate::install) was not called: a start-up mistake, reported on the
/// first call with what to do about it.
#[inline]
pub fn global_cache(function: &'static str) -> &'static Cache {
    match crate::global() {
        Ok(cache) => cache,
        Err(error) => not_installed(function, &error),
    }
}

#[cold]
#[inline(never)]
#[allow(clippy::panic)]
fn not_installed(function: &str, error: &crate::Error) -> ! {
    panic!("`{function}` uses stormcache's process-wide cache: {error}")
}

/// What a key placeholder may name: anything `Display`.
///
/// A trait of its own rather than a `Display` bound, so that a placeholder naming a value
/// that is not `Display` is reported as a key problem, at the template, with what to do.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot go into a cache key: it does not implement `std::fmt::Display`",
    label = "a placeholder of this key template names a `{Self}`",
    note = "a key holds the `Display` text of each placeholder's value (escaped): implement \
            `std::fmt::Display` for the type, or name one of its fields that implements it, \
            like `{{user.id}}`"
)]
pub trait KeyValue: Display {}

impl<T: Display + ?Sized> KeyValue for T {}

/// Appends an escaped value to a key (the generated code passes a reference).
#[inline(always)]
pub fn value<T: KeyValue + ?Sized>(builder: KeyBuilder, value: &T) -> KeyBuilder {
    builder.value(value)
}

/// The per-call options with the call's tags added to the function's static ones.
#[inline]
pub fn with_tags<const N: usize>(base: &EntryOptions, tags: [Key; N]) -> EntryOptions {
    base.clone().tags(tags)
}

/// Marks a `None` so that [`cached_option`] does not cache it.
#[derive(Debug)]
pub struct NoValue;

/// A function returning `Option<T>` answers `None` past its hard timeout.
impl From<crate::LoadTimeout> for NoValue {
    fn from(_: crate::LoadTimeout) -> Self {
        NoValue
    }
}

/// Read-through for a function returning `Option<T>`: `Some` is cached, `None` is not.
pub async fn cached_option<T, F, Fut>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    loader: F,
) -> Option<T>
where
    T: Cacheable,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    cache
        .try_get_or_load(
            key,
            options,
            || async move { loader().await.ok_or(NoValue) },
        )
        .await
        .ok()
}

/// Read-through for a function returning `Result<T, E>` with no hard timeout: its error
/// type need not convert from [`LoadTimeout`](crate::LoadTimeout), which it never returns.
pub async fn cached_result<T, E, F, Fut>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    loader: F,
) -> Result<T, E>
where
    T: Cacheable,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    cache.try_get_or_load_untimed(key, options, loader).await
}

/// Read-through with eager refresh for a function returning a plain value (its loader owns
/// its arguments).
pub async fn refreshing_value<T, F, Fut>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    loader: F,
) -> T
where
    T: Cacheable,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let loader = move || async move { Ok::<T, std::convert::Infallible>(loader().await) };
    match cache.fetch_refreshing(key, options, loader).await {
        Ok(fetched) => fetched.value,
        Err(never) => match never {},
    }
}

/// Read-through with eager refresh for a function returning `Result<T, E>`, without a hard
/// timeout (so `E` need not convert from [`LoadTimeout`](crate::LoadTimeout)).
pub async fn refreshing_result<T, E, F, Fut>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    loader: F,
) -> Result<T, E>
where
    T: Cacheable,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    cache
        .fetch_refreshing_untimed(key, options, loader)
        .await
        .map(|fetched| fetched.value)
}

/// Read-through with eager refresh for a function returning `Option<T>`: `Some` is cached.
pub async fn refreshing_option<T, F, Fut>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    loader: F,
) -> Option<T>
where
    T: Cacheable,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let loader = move || async move { loader().await.ok_or(NoValue) };
    cache
        .fetch_refreshing(key, options, loader)
        .await
        .ok()
        .map(|fetched| fetched.value)
}

/// `name_refresh` of a function returning any cached value.
pub async fn refresh_value<T: Cacheable>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    value: T,
) -> T {
    cache.set(key, value.clone(), options).await;
    value
}

/// `name_refresh` of a function returning `Result<T, E>`: only `Ok` is written.
pub async fn refresh_result<T: Cacheable, E>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    result: Result<T, E>,
) -> Result<T, E> {
    if let Ok(value) = &result {
        cache.set(key, value.clone(), options).await;
    }
    result
}

/// `name_refresh` of a function returning `Option<T>`: only `Some` is written.
pub async fn refresh_option<T: Cacheable>(
    cache: &Cache,
    key: Key,
    options: &EntryOptions,
    value: Option<T>,
) -> Option<T> {
    if let Some(value) = &value {
        cache.set(key, value.clone(), options).await;
    }
    value
}

/// Adds keys to an invalidation.
#[inline]
pub fn add_keys(inv: &mut Invalidation, keys: impl IntoIterator<Item = Key>) {
    let mut taken = std::mem::take(inv);
    for key in keys {
        taken = taken.key(key);
    }
    *inv = taken;
}

/// Adds tags to an invalidation.
#[inline]
pub fn add_tags(inv: &mut Invalidation, tags: impl IntoIterator<Item = Key>) {
    let mut taken = std::mem::take(inv);
    for tag in tags {
        taken = taken.tag(tag);
    }
    *inv = taken;
}

/// Adds classes to an invalidation.
#[inline]
pub fn add_classes(inv: &mut Invalidation, classes: &[&'static str]) {
    let mut taken = std::mem::take(inv);
    for class in classes {
        taken = taken.class(*class);
    }
    *inv = taken;
}

/// Adds what a reusable rule names.
#[inline]
pub fn add_rule<R: InvalidationRule + ?Sized>(inv: &mut Invalidation, rule: &R) {
    rule.add_to(inv);
}

/// Runs an invalidation after (or before) a mutating call. Nothing is returned: the mutation
/// itself succeeded, and the cache must not turn it into an error. While Redis is down the
/// cache journals the Redis half and replays it on recovery.
///
/// Inside a Tokio runtime the invalidation runs as its own task, awaited here: a caller that
/// drops the mutation's future halfway (a timeout, a closed connection) cannot cancel it
/// and leave stale entries behind.
pub async fn invalidate_quietly(cache: &Cache, inv: Invalidation, function: &'static str) {
    if inv.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let cache = cache.clone();
            let task = runtime.spawn(async move { apply(&cache, &inv, function).await });
            if let Err(error) = task.await {
                tracing::warn!(function, %error, "#[invalidate]: the invalidation task failed");
            }
        }
        Err(_) => apply(cache, &inv, function).await,
    }
}

/// The first delete of `double_delete`, before the function runs: the local store is
/// cleaned and the Redis half started, without waiting for it, so that with the second delete
/// the call waits for Redis once at most.
pub async fn invalidate_first(cache: &Cache, inv: Invalidation, function: &'static str) {
    if inv.is_empty() {
        return;
    }
    let report = cache
        .invalidate_within(&inv, std::time::Duration::ZERO)
        .await;
    log(&report, function);
}

async fn apply(cache: &Cache, inv: &Invalidation, function: &'static str) {
    let report = cache.invalidate_promptly(inv).await;
    log(&report, function);
}

fn log(report: &crate::InvalidationReport, function: &'static str) {
    if let RedisOutcome::Journaled { overflowed } = report.redis {
        tracing::debug!(
            function,
            overflowed,
            "#[invalidate]: Redis unavailable; local store cleaned, Redis half journaled"
        );
    }
    if !report.unknown_classes.is_empty() {
        tracing::warn!(
            function,
            classes = ?report.unknown_classes,
            "#[invalidate] names classes this cache does not declare"
        );
    }
}
