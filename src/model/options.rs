//! Per-call options of the read-through and write calls.
//!
//! They say how long an entry lives, which class it belongs to (part of its identity: read
//! and write a key with the same options) and which tags reach it.

use std::borrow::Cow;
use std::time::Duration;

use crate::key::Key;

/// The longest TTL, grace, lock or layer setting a duration is taken as: about a century.
/// Longer ones (up to `Duration::MAX`, which a caller may pass to mean "forever") would
/// overflow the clocks and Redis's expiry, and a century is forever for a cache.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How long one loaded value is fresh, and kept past that, when the value itself says so
/// (an HTTP response's own `max-age`, `must-revalidate`…): a `ttl` overrides the options'
/// TTL (without jitter), a `grace` their grace, for that one store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) ttl: Option<Duration>,
    pub(crate) grace: Option<Duration>,
}

/// Options of one cached call: TTL (with its jitter and the local copy's limit), class,
/// tags, fail-safe grace, distributed stampede lock, eager refresh, and which stores the
/// call uses.
///
/// ```
/// use std::time::Duration;
/// use stormcache::{EntryOptions, Key};
///
/// let opts = EntryOptions::new()
///     .class("permissions")
///     .ttl(Duration::from_secs(15 * 60))
///     .tag(Key::builder("user:").value("alice").build());
/// assert_eq!(opts.class_name(), Some("permissions"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct EntryOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) class: Option<Cow<'static, str>>,
    pub(crate) tags: Vec<Key>,
    pub(crate) stale_for: Option<Duration>,
    pub(crate) lock: Option<Duration>,
    /// Per mille of the TTL after which a hit refreshes.
    pub(crate) eager_refresh: Option<u16>,
    pub(crate) ttl_jitter: Option<TtlJitter>,
    pub(crate) local_ttl: Option<Duration>,
    /// Neither read nor write the local store.
    pub(crate) skip_local: bool,
    /// Neither read nor write Redis.
    pub(crate) skip_redis: bool,
    /// How the key was made, for traces (`user:groups:{id}`), never its values.
    pub(crate) key_template: Option<Cow<'static, str>>,
    /// With a stale value at hand, answer it after this long and let the load finish.
    pub(crate) soft_timeout: Option<Duration>,
    /// Give up on the load after this long.
    pub(crate) hard_timeout: Option<Duration>,
    /// The grace a value declares for itself (an HTTP response's `stale-while-revalidate`,
    /// `stale-if-error`), for the reads that find it in Redis: its local copy is kept that
    /// long past its freshness, and an expired one is handed to the caller as stale.
    pub(crate) value_grace: Option<ValueGrace>,
    /// Whether an expired value found in Redis is answered at once, without waiting for a
    /// load (an HTTP response inside its `stale-while-revalidate` window): the caller
    /// refreshes it in the background.
    pub(crate) stale_now: Option<StaleNow>,
    /// Whether an expired value is kept only to be revalidated by the loader (an HTTP
    /// response with `must-revalidate`): it is never answered at a soft or hard timeout,
    /// which then goes on as if there were no stale value (the read waits, or fails at the
    /// hard timeout).
    pub(crate) revalidate_only: Option<StaleNow>,
}

/// See [`EntryOptions::value_grace`]: reads the grace a value declares for itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ValueGrace(pub(crate) fn(&dyn std::any::Any) -> Option<Duration>);

impl ValueGrace {
    /// The grace `value` declares, zero when it declares none.
    pub(crate) fn of<T: 'static>(grace: Option<ValueGrace>, value: &T) -> Duration {
        grace
            .and_then(|g| (g.0)(value as &dyn std::any::Any))
            .unwrap_or(Duration::ZERO)
    }
}

impl PartialEq for ValueGrace {
    fn eq(&self, other: &Self) -> bool {
        // The same function, compared by address: options are equal when they read values
        // the same way.
        self.0 as usize == other.0 as usize
    }
}

impl Eq for ValueGrace {}

/// See [`EntryOptions::stale_now`]: whether an expired value answers at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StaleNow(pub(crate) fn(&dyn std::any::Any) -> bool);

impl StaleNow {
    pub(crate) fn holds<T: 'static>(stale_now: Option<StaleNow>, value: &T) -> bool {
        stale_now.is_some_and(|s| (s.0)(value as &dyn std::any::Any))
    }

    /// The stale value, if the options let it answer at a timeout (see
    /// [`EntryOptions::revalidate_only`]).
    pub(crate) fn at_timeout<T: 'static>(options: &EntryOptions, stale: Option<T>) -> Option<T> {
        stale.filter(|v| !StaleNow::holds(options.revalidate_only, v))
    }
}

impl PartialEq for StaleNow {
    fn eq(&self, other: &Self) -> bool {
        self.0 as usize == other.0 as usize
    }
}

impl Eq for StaleNow {}

impl EntryOptions {
    /// No TTL (the class's), the default class, no tags, no grace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time to live, overriding the class's default. Longer than about a century (up to
    /// `Duration::MAX`) counts as a century.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl.min(LONGEST));
        self
    }

    /// The class the entry belongs to. Unknown names fall back to the default class, with a
    /// warning.
    pub fn class(mut self, class: impl Into<Cow<'static, str>>) -> Self {
        self.class = Some(class.into());
        self
    }

    /// Adds a tag: invalidating the tag removes the entry.
    pub fn tag(mut self, tag: Key) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds several tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = Key>) -> Self {
        self.tags.extend(tags);
        self
    }

    /// Fail-safe grace: for this long after the TTL, an expired value is kept and served
    /// (marked stale) if the loader fails. At most about a century, like the TTL.
    pub fn stale_for(mut self, grace: Duration) -> Self {
        self.stale_for = Some(grace.min(LONGEST));
        self
    }

    /// Distributed stampede protection: on a miss in both stores, only the instance that
    /// takes a lock in Redis runs the loader; the others wait for its value to appear in
    /// Redis. The lock expires after `ttl`, so a holder that dies (or hangs) blocks the
    /// others for at most that long, after which one of them takes the lock and loads.
    /// Choose `ttl` above the loader's usual duration.
    ///
    /// Without Redis, or when Redis is down, each instance loads for itself (within one
    /// process, concurrent misses still run one load).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().distributed_lock(Duration::from_secs(5));
    /// # let _ = opts;
    /// ```
    pub fn distributed_lock(mut self, ttl: Duration) -> Self {
        self.lock = Some(ttl.max(Duration::from_millis(1)));
        self
    }

    /// Eager refresh: a hit after `threshold` (a fraction, `0.0..1.0`) of the entry's TTL has
    /// passed is served as usual and also refreshed in the background, once per key at a
    /// time, so that hot keys do not expire under load. `0.8` refreshes hits in the last
    /// 20 % of the TTL.
    ///
    /// Only [`Cache::fetch_refreshing`](crate::Cache::fetch_refreshing) acts on it, since a
    /// background refresh needs a loader that owns what it uses (`'static`).
    ///
    /// ```
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().eager_refresh(0.8);
    /// # let _ = opts;
    /// ```
    pub fn eager_refresh(mut self, threshold: f64) -> Self {
        let per_mille = (threshold.clamp(0.0, 1.0) * 1000.0).round() as u16;
        self.eager_refresh = Some(per_mille);
        self
    }

    /// TTL jitter, overriding the class's: each stored entry's TTL is shortened by a random
    /// amount up to `jitter` (a [`Duration`], or a fraction `0.0..=1.0` of the TTL), so that
    /// entries written together — by a deploy's warm-up, or by every replica after a flush —
    /// do not all expire, and reload, in the same instant.
    ///
    /// The TTL is drawn once per store, and Redis and the local copy use the same one;
    /// another instance that reads the entry from Redis keeps it no longer than Redis does.
    /// `Duration::ZERO` turns off a class's jitter for this call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::EntryOptions;
    ///
    /// // TTLs between 9 and 10 minutes.
    /// let opts = EntryOptions::new().ttl(Duration::from_secs(600)).ttl_jitter(0.1);
    /// // Or in absolute terms: between 9 min 30 s and 10 minutes.
    /// let opts = opts.ttl_jitter(Duration::from_secs(30));
    /// # let _ = opts;
    /// ```
    pub fn ttl_jitter(mut self, jitter: impl Into<TtlJitter>) -> Self {
        self.ttl_jitter = Some(jitter.into());
        self
    }

    /// Keeps the local copy for at most `ttl` (at least 1 ms), overriding the class's limit,
    /// while Redis keeps the entry for its full TTL. Once the local copy has expired, the
    /// next read takes the value from Redis (an L2 hit, not a reload), so the instance picks
    /// up a newer value within `ttl` even if it missed the invalidation that announced it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::EntryOptions;
    ///
    /// // An hour in Redis, re-read from Redis at least every 30 s.
    /// let opts = EntryOptions::new()
    ///     .ttl(Duration::from_secs(3600))
    ///     .local_ttl(Duration::from_secs(30));
    /// # let _ = opts;
    /// ```
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.local_ttl = Some(ttl.max(Duration::from_millis(1)));
        self
    }

    /// This call neither reads nor writes the local store: every read goes to Redis (then
    /// the loader), and what it loads is stored in Redis only. For values too large, or too
    /// rarely read twice, to be worth a place in memory. A [`set`](crate::Cache::set) with
    /// it also drops this instance's older local copy, as it does the other instances'.
    ///
    /// With [`skip_redis`](Self::skip_redis) too, nothing is cached: the loader runs every
    /// time.
    pub fn skip_local(mut self) -> Self {
        self.skip_local = true;
        self
    }

    /// This call neither reads nor writes Redis: it uses the local store only, as a cache
    /// without Redis would (no distributed lock either). For values that are cheap to load
    /// and not worth a round trip, or that must not leave the process. A
    /// [`set`](crate::Cache::set) with it changes this instance's copy only; Redis and the
    /// other instances keep theirs.
    ///
    /// Invalidations are not affected: they reach both stores whatever the calls that
    /// stored the entry said.
    pub fn skip_redis(mut self) -> Self {
        self.skip_redis = true;
        self
    }

    /// Soft loader timeout: a read that has a stale value at hand — an expired entry inside
    /// its [`stale_for`](Self::stale_for) grace — and has waited this long for the loader
    /// answers the stale value ([`Origin::Stale`](crate::Origin::Stale)). The load goes on
    /// and its value is stored as usual, so the next reads get it.
    ///
    /// Without a stale value the read waits for the loader (up to the
    /// [`hard_timeout`](Self::hard_timeout)).
    ///
    /// Who gets the stale value at the soft timeout:
    /// - with [`Cache::fetch_refreshing`](crate::Cache::fetch_refreshing), whose loader owns
    ///   what it uses, every caller: the load itself runs in a task of its own and finishes
    ///   in the background;
    /// - with the other calls, whose loader may borrow from the caller, every caller but
    ///   the one running the loader, which waits for it (or for the hard timeout): a
    ///   borrowed load cannot outlive its caller, and cancelling it would only start it
    ///   again on the next read. The callers waiting for it in this process
    ///   (single-flight) and on other instances (the [distributed
    ///   lock](Self::distributed_lock)) are answered at the soft timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::EntryOptions;
    ///
    /// // Past its TTL, a slow origin costs readers 100 ms at most for the next hour.
    /// let opts = EntryOptions::new()
    ///     .stale_for(Duration::from_secs(3600))
    ///     .soft_timeout(Duration::from_millis(100));
    /// # let _ = opts;
    /// ```
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        self.soft_timeout = Some(after);
        self
    }

    /// Hard loader timeout: a read that has waited this long for the loader — its own, or
    /// another caller's it joined, here or on another instance — gives up: it answers the
    /// stale value if its grace allows, and otherwise fails with
    /// [`LoadTimeout`](crate::LoadTimeout), converted into the loader's error type. The
    /// loader of the call that ran it is cancelled (its future dropped).
    ///
    /// [`Cache::get_or_load`](crate::Cache::get_or_load) has no error to return: without a
    /// stale value it waits for its loader however long it takes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use std::time::Duration;
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let opts = EntryOptions::new().hard_timeout(Duration::from_millis(10));
    /// let slow: Result<u32, std::io::Error> = cache
    ///     .try_get_or_load(Key::literal("slow")?, &opts, || async {
    ///         tokio::time::sleep(Duration::from_secs(5)).await;
    ///         Ok(1)
    ///     })
    ///     .await;
    /// assert_eq!(slow.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    /// # Ok(()) }
    /// ```
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        self.hard_timeout = Some(after);
        self
    }

    /// The local store only: [`skip_redis`](Self::skip_redis), and undoes an earlier
    /// [`skip_local`](Self::skip_local).
    ///
    /// ```
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().local_only();
    /// assert!(opts.uses_local() && !opts.uses_redis());
    /// ```
    pub fn local_only(mut self) -> Self {
        self.skip_local = false;
        self.skip_redis = true;
        self
    }

    /// Whether the call reads and writes the local store (no [`skip_local`](Self::skip_local)).
    pub fn uses_local(&self) -> bool {
        !self.skip_local
    }

    /// Whether the call reads and writes Redis, when the cache has it (no
    /// [`skip_redis`](Self::skip_redis)).
    pub fn uses_redis(&self) -> bool {
        !self.skip_redis
    }

    /// The key's template (`user:groups:{id}`), recorded as `cache.key_template` on the
    /// read's span: traces can then tell reads apart without the key's values, which can
    /// carry personal data. `#[cached]` with a `key` sets it; for other calls it is
    /// optional.
    ///
    /// ```
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().key_template("user:groups:{id}");
    /// assert_eq!(opts.key_template_name(), Some("user:groups:{id}"));
    /// ```
    pub fn key_template(mut self, template: impl Into<Cow<'static, str>>) -> Self {
        self.key_template = Some(template.into());
        self
    }

    /// The key template given, if any.
    pub fn key_template_name(&self) -> Option<&str> {
        self.key_template.as_deref()
    }

    /// The class name given, if any.
    pub fn class_name(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// The tags given.
    pub fn tag_list(&self) -> &[Key] {
        &self.tags
    }
}

/// How much shorter than its TTL an entry may live: see [`EntryOptions::ttl_jitter`] and
/// [`Class::ttl_jitter`](crate::Class::ttl_jitter).
///
/// Made from a [`Duration`] (at most that much shorter) or an `f64` fraction of the TTL,
/// clamped to `0.0..=1.0` (`0.1`: up to 10 % shorter). An entry keeps at least 1 ms.
///
/// ```
/// use std::time::Duration;
/// use stormcache::TtlJitter;
///
/// let ttl = Duration::from_secs(600);
/// assert_eq!(TtlJitter::from(0.1).max_for(ttl), Duration::from_secs(60));
/// assert_eq!(TtlJitter::from(Duration::from_secs(5)).max_for(ttl), Duration::from_secs(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TtlJitter(Spread);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Spread {
    /// Parts per million of the TTL: an integer, so options stay `Eq`.
    Fraction(u32),
    UpTo(Duration),
}

impl TtlJitter {
    /// Up to `fraction` (clamped to `0.0..=1.0`; NaN is 0) of the TTL.
    pub fn fraction(fraction: f64) -> Self {
        let ppm = (fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        TtlJitter(Spread::Fraction(ppm))
    }

    /// Up to `jitter`.
    pub fn up_to(jitter: Duration) -> Self {
        TtlJitter(Spread::UpTo(jitter))
    }

    /// The most an entry of TTL `ttl` is shortened by: never so much that less than 1 ms
    /// is left.
    pub fn max_for(self, ttl: Duration) -> Duration {
        let spread = match self.0 {
            Spread::Fraction(ppm) => ttl.mul_f64(f64::from(ppm) / 1_000_000.0),
            Spread::UpTo(jitter) => jitter,
        };
        spread.min(ttl.saturating_sub(Duration::from_millis(1)))
    }
}

impl From<Duration> for TtlJitter {
    fn from(jitter: Duration) -> Self {
        TtlJitter::up_to(jitter)
    }
}

impl From<f64> for TtlJitter {
    fn from(fraction: f64) -> Self {
        TtlJitter::fraction(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_bounded_by_the_ttl() {
        let ttl = Duration::from_secs(10);
        assert_eq!(
            TtlJitter::from(0.25).max_for(ttl),
            Duration::from_millis(2500)
        );
        assert_eq!(
            TtlJitter::from(7.0).max_for(ttl),
            ttl - Duration::from_millis(1)
        );
        assert_eq!(TtlJitter::from(f64::NAN).max_for(ttl), Duration::ZERO);
        assert_eq!(
            TtlJitter::from(Duration::from_secs(60)).max_for(ttl),
            ttl - Duration::from_millis(1)
        );
        assert_eq!(TtlJitter::from(0.5).max_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn local_only_undoes_skip_local() {
        let opts = EntryOptions::new().skip_local().local_only();
        assert!(opts.uses_local() && !opts.uses_redis());
        let opts = EntryOptions::new().skip_local();
        assert!(!opts.uses_local() && opts.uses_redis());
    }
}
