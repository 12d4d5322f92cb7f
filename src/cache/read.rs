//! The read-through calls of [`Cache`]: the value of a key from the local store, Redis, or
//! the loader, in the forms callers need (infallible, fallible, with where it came from,
//! with an owned loader, with an adaptive loader).
//!
//! The hit path is kept short on purpose — one local lookup, a downcast, a clone and a
//! relaxed counter — and everything else lives in the boxed slow path (`load`).

use std::convert::Infallible;
use std::future::Future;

use tracing::Instrument;

use super::{adapt, eager_refresh, load, Cache};
use crate::core::telemetry;
use crate::error::LoadError;
use crate::key::Key;
use crate::model::{Cacheable, EntryOptions, Fetched, Lifetime, Origin};

impl Cache {
    /// Read-through: the cached value of `key`, or the loader's, which is then cached.
    ///
    /// Concurrent misses of one key in this process run the loader once.
    pub async fn get_or_load<T, F, Fut>(&self, key: Key, options: &EntryOptions, loader: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        // No error to give: a hard timeout without a stale value does not stop it.
        let loader = |_: Option<&T>| async { Ok::<T, Infallible>(loader().await) };
        let loaded = self.read(key, options, loader, None).await;
        match loaded {
            Ok(fetched) => fetched.value,
            Err(never) => match never {},
        }
    }

    /// Read-through with a fallible loader: only `Ok` values are cached, and the loader's
    /// own error is returned — or, past the options'
    /// [`hard_timeout`](EntryOptions::hard_timeout), a [`LoadTimeout`](crate::LoadTimeout)
    /// converted into it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let key = Key::literal("config")?;
    /// let failed: Result<String, &str> =
    ///     cache.try_get_or_load(key.clone(), &EntryOptions::new(), || async { Err("db down") }).await;
    /// assert_eq!(failed, Err("db down"));
    /// let loaded: Result<String, &str> =
    ///     cache.try_get_or_load(key, &EntryOptions::new(), || async { Ok("v1".into()) }).await;
    /// assert_eq!(loaded.as_deref(), Ok("v1"));
    /// # Ok(()) }
    /// ```
    pub async fn try_get_or_load<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<T, E>
    where
        T: Cacheable,
        E: LoadError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let loaded = self
            .read(key, options, plain(loader), E::timeout_carrier())
            .await;
        loaded.map(|f| f.value)
    }

    /// [`try_get_or_load`](Cache::try_get_or_load) for options without a hard timeout
    /// (which it ignores), so `E` need not convert from [`LoadTimeout`](crate::LoadTimeout).
    pub(crate) async fn try_get_or_load_untimed<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.read(key, options, plain(loader), None)
            .await
            .map(|f| f.value)
    }

    /// The synchronous first step of [`fetch`](Cache::fetch): a fresh value of `key` in the
    /// local store, counted as a local hit, or the key back (`Err`) to go on with `fetch`.
    ///
    /// For callers whose hit path must not allocate or await, such as the HTTP layer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let opts = EntryOptions::new();
    /// let key = Key::literal("answer")?;
    /// let key = cache.get_local::<u32>(key, &opts).expect_err("nothing yet");
    /// cache.set(key.clone(), 42u32, &opts).await;
    /// assert_eq!(cache.get_local::<u32>(key, &opts).ok(), Some(42));
    /// # Ok(()) }
    /// ```
    pub fn get_local<T: Cacheable>(&self, key: Key, options: &EntryOptions) -> Result<T, Key> {
        if options.skip_local {
            return Err(key);
        }
        let core = &*self.shared.core;
        let local_key = core.local_key(key, options)?;
        match core.lookup::<T>(&local_key) {
            Some(hit) if core.serves(&hit) => {
                core.stats().l1_hit(local_key.class);
                Ok(hit.value)
            }
            _ => Err(local_key.key),
        }
    }

    /// The value of `key` the local store keeps past its freshness, inside its grace (a
    /// fresh one too, though callers ask after [`get_local`](Cache::get_local) missed), with
    /// the key back. Not counted as a hit: the caller decides whether the
    /// stale value may answer.
    pub(crate) fn get_local_stale<T: Cacheable>(
        &self,
        key: Key,
        options: &EntryOptions,
    ) -> (Key, Option<T>) {
        if options.skip_local {
            return (key, None);
        }
        let core = &*self.shared.core;
        match core.local_key(key, options) {
            Ok(local_key) => {
                let hit = core.lookup::<T>(&local_key).map(|hit| hit.value);
                (local_key.key, hit)
            }
            Err(key) => (key, None),
        }
    }

    /// Read-through that also says where the value came from (the HTTP layer uses it for
    /// `x-cache`). With `stale_for` in the options, a failing loader is answered with the
    /// expired value if it is still inside its grace ([`Origin::Stale`]).
    pub async fn fetch<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: LoadError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.read(key, options, plain(loader), E::timeout_carrier())
            .await
    }

    /// The read every other is made of. The loader is shown the stale value kept for it, if
    /// any (the HTTP layer revalidates it with the origin).
    async fn read<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
        on_timeout: load::OnTimeout<E>,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        F: FnOnce(Option<&T>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let core = &*self.shared.core;
        let local_key = match core.local_key(key, options) {
            Ok(local_key) => local_key,
            // An undeclared class: not cached (the core has logged why).
            Err(_) => {
                let started = std::time::Instant::now();
                let loaded = loader(None).await;
                core.stats().loaded(None, started.elapsed());
                return loaded.map(|value| Fetched {
                    value,
                    origin: Origin::Loader,
                });
            }
        };
        let missed = match load::first_look(core, &local_key, options) {
            Ok(hit) => return Ok(hit),
            Err(missed) => missed,
        };
        let span = telemetry::read_span(
            core.namespace(),
            core.class_name(local_key.class),
            options.key_template_name(),
        );
        // Boxed so the hit path's future stays small.
        let loading = load::load_coalesced(core, local_key, options, missed, loader, on_timeout);
        Box::pin(loading.instrument(span)).await
    }

    /// [`fetch`](Cache::fetch) where the loader is shown the stale value, if one is kept (the
    /// HTTP layer revalidates it with the origin), and a loaded value may set its own TTL
    /// and grace (`lifetime_of`): the HTTP layer stores a response for as long as its own
    /// headers say it is fresh, which is only known once it is loaded.
    pub(crate) async fn fetch_with_lifetime<T, E, F, Fut, L>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
        lifetime_of: L,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: LoadError,
        F: FnOnce(Option<&T>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        L: FnOnce(&T) -> Option<Lifetime>,
    {
        let loader = move |stale: Option<&T>| {
            let loading = loader(stale);
            async move {
                let loaded = loading.await;
                if let Some(lifetime) = loaded.as_ref().ok().and_then(lifetime_of) {
                    adapt::record_lifetime(lifetime);
                }
                loaded
            }
        };
        self.read(key, options, loader, E::timeout_carrier()).await
    }

    /// [`fetch`](Cache::fetch) with a loader that says how to cache its value: its TTL, more
    /// tags, or not at all (see [`Loaded`](crate::Loaded)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, EntryOptions, Key, Loaded};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let doc = Key::literal("doc:7")?;
    /// let folder = Key::literal("folder:3")?;
    /// let opts = EntryOptions::new();
    /// let read = cache
    ///     .fetch_adaptive(doc.clone(), &opts, || async {
    ///         // Only the loaded document says which folder it is in.
    ///         Ok::<_, stormcache::Error>(Loaded::new("text".to_owned()).tag(folder.clone()))
    ///     })
    ///     .await?;
    /// assert_eq!(read.value, "text");
    /// cache.invalidate_tag(&folder).await;
    /// assert!(cache.get_local::<String>(doc, &opts).is_err());
    /// # Ok(()) }
    /// ```
    pub async fn fetch_adaptive<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: LoadError,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<crate::model::Loaded<T>, E>>,
    {
        let loader = || async move {
            loader().await.map(|loaded| {
                adapt::record(loaded.adjust);
                loaded.value
            })
        };
        self.fetch(key, options, loader).await
    }

    /// The cached value of `key`, if any (local store, then Redis); no loader.
    pub async fn get<T: Cacheable>(&self, key: &Key, options: &EntryOptions) -> Option<T> {
        let result: Result<Fetched<T>, ()> =
            self.fetch(key.clone(), options, || async { Err(()) }).await;
        result.ok().map(|f| f.value)
    }

    /// [`fetch`](Cache::fetch) with a loader that owns what it uses (`'static`), so that
    /// its load can go on after the call has returned:
    ///
    /// - with [`EntryOptions::eager_refresh`], a local hit past the threshold of its TTL is
    ///   served and refreshed in the background, once per key at a time;
    /// - with [`EntryOptions::soft_timeout`], a read holding a stale value answers it at the
    ///   soft timeout and the load finishes in the background (its value stored as usual),
    ///   whoever runs it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let opts = EntryOptions::new().ttl(Duration::from_secs(60)).eager_refresh(0.8);
    /// let sku = String::from("sku-1");
    /// let price = cache
    ///     .fetch_refreshing(Key::builder("price:").value(&sku).build(), &opts, move || async move {
    ///         Ok::<u32, std::io::Error>(if sku == "sku-1" { 990 } else { 0 })
    ///     })
    ///     .await?;
    /// assert_eq!(price.value, 990);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_refreshing<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: LoadError + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.fetch_refreshing_with(key, options, loader, E::timeout_carrier())
            .await
    }

    /// [`fetch_refreshing`](Cache::fetch_refreshing) for options without a hard timeout
    /// (which it ignores), so `E` need not convert from [`LoadTimeout`](crate::LoadTimeout).
    pub(crate) async fn fetch_refreshing_untimed<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.fetch_refreshing_with(key, options, loader, None).await
    }

    async fn fetch_refreshing_with<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
        on_timeout: load::OnTimeout<E>,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let detaches = options.soft_timeout.is_some() && !options.skip_local;
        // Without the local store there is no hit to refresh early, nor a stale one.
        let threshold = options.eager_refresh.filter(|_| !options.skip_local);
        if threshold.is_none() && !detaches {
            return self.read(key, options, plain(loader), on_timeout).await;
        }
        let local_key = match self.shared.core.local_key(key, options) {
            Ok(local_key) => local_key,
            Err(key) => return self.read(key, options, plain(loader), on_timeout).await,
        };
        let (local_key, loader) = match threshold {
            Some(threshold) => match eager_refresh::serve_and_refresh(
                &self.shared.core,
                &self.shared.invalidator,
                &self.shared.refreshing,
                local_key,
                options,
                threshold,
                loader,
            ) {
                Ok(fetched) => return Ok(fetched),
                Err(missed) => missed,
            },
            None => (local_key, loader),
        };
        if detaches {
            let core = &self.shared.core;
            let loader = plain(loader);
            return load::load_detached(core, local_key, options, loader, on_timeout).await;
        }
        self.read(local_key.key, options, plain(loader), on_timeout)
            .await
    }
}

/// A loader that has no use for the stale value, as the read path takes loaders.
fn plain<T, F: FnOnce() -> Fut, Fut>(loader: F) -> impl FnOnce(Option<&T>) -> Fut {
    move |_| loader()
}
