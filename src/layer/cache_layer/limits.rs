//! The builder methods of [`CacheLayer`] that bound what hostile traffic can make it do:
//! how often a request's `no-cache` reaches the handler, which query parameters make new
//! keys, and how many entries one layer keeps.

use std::sync::Arc;
use std::time::Duration;

use super::config::Config;
use super::limiter::Refreshes;
use super::registry::Registry;
use super::CacheLayer;
use crate::layer::query_filter::NamePattern;
use crate::model::LONGEST;

impl CacheLayer {
    /// The least time between two refreshes of one key by requests with `no-cache`, when
    /// [`request_no_cache(true)`](Self::request_no_cache) honours them (default
    /// [`DEFAULT_REQUEST_NO_CACHE_INTERVAL`](crate::layer::DEFAULT_REQUEST_NO_CACHE_INTERVAL), 1 s). `Duration::ZERO` leaves only the
    /// coalescing of concurrent ones.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::layer::CacheLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// // Clients may force a page to be rebuilt, at most every 10 seconds.
    /// let layer = CacheLayer::new(cache)
    ///     .request_no_cache(true)
    ///     .request_no_cache_interval(Duration::from_secs(10));
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn request_no_cache_interval(mut self, interval: Duration) -> Self {
        self.config().refresh_interval = interval.min(LONGEST);
        self
    }

    /// Only these query parameters are part of the key (an allowlist); the others are left
    /// out of it. The handler still gets the whole query. A name ending in `*` is a prefix
    /// (`f_*`). Names are compared with their unreserved escapes decoded (`utm%5Fsource` is
    /// `utm_source`). Calls add up. No effect with a [`key_fn`](Self::key_fn), which
    /// makes the whole path-and-query part.
    ///
    /// The risk: a parameter left out of the key must not change the response, or the
    /// response to one value is served for all of them (`?page=2` answered with page 1, or
    /// worse, one user's `?token=` page to others). In exchange a client can no longer create
    /// entries by adding parameters the handler ignores.
    ///
    /// ```
    /// use stormcache::layer::CacheLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// // `/search?q=rust&page=2&utm_source=mail` is keyed as `q=rust&page=2`.
    /// let layer = CacheLayer::new(cache).query_params(["q", "page"]);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn query_params<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let patterns = names.into_iter().map(|n| NamePattern::parse(n.as_ref()));
        self.config().query.allow(patterns);
        self
    }

    /// These query parameters are left out of the key (a denylist): tracking parameters
    /// such as `utm_*`, `fbclid`, `gclid`. The handler still gets the whole query. A name
    /// ending in `*` is a prefix. Calls add up, and combine with
    /// [`query_params`](Self::query_params). The same risk: a parameter left out must not
    /// change the response.
    ///
    /// ```
    /// use stormcache::layer::CacheLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// let layer = CacheLayer::new(cache).ignore_query_params(["utm_*", "fbclid", "gclid"]);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn ignore_query_params<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let patterns = names.into_iter().map(|n| NamePattern::parse(n.as_ref()));
        self.config().query.deny(patterns);
        self
    }

    /// At most `n` entries stored through this layer stay in this process's local store
    /// (default: no bound but the store's own, see
    /// [`CacheBuilder::local_capacity`](crate::CacheBuilder::local_capacity)). Beyond `n`,
    /// the entries of the least recently stored or used keys are removed, so that a client
    /// enumerating query strings on one route cannot push out the entries of the others.
    ///
    /// The bound is per layer value (clones share it): a layer given to `Router::layer`
    /// bounds all the routes together, one given to each `route_layer` bounds its route. It is kept in this
    /// process: entries are removed from the local store only. In Redis they live out their
    /// TTL, and another instance keeps its own `n`; bound Redis with its own `maxmemory`
    /// and an eviction policy. The count is of keys recorded, which may include entries
    /// already expired or invalidated, so fewer than `n` can be live.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use stormcache::layer::CacheLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// let search = CacheLayer::new(cache).max_entries(1_000);
    /// let app: Router = Router::new().route("/search", get(|| async { "[]" }).route_layer(search));
    /// # let _ = app; Ok(()) }
    /// ```
    pub fn max_entries(mut self, n: u64) -> Self {
        self.config().max_entries = Some(n);
        self
    }

    /// The configuration of the services, with the state they share.
    pub(super) fn built(&self) -> Arc<Config> {
        let built = self.built.get_or_init(|| {
            let mut config = (*self.config).clone();
            config.refreshes = config
                .honor_request_no_cache
                .then(|| Arc::new(Refreshes::new(config.refresh_interval)));
            config.entries = config.max_entries.map(|max| {
                Arc::new(Registry::new(
                    max,
                    self.cache.clone(),
                    config.options.clone(),
                ))
            });
            Arc::new(config)
        });
        Arc::clone(built)
    }
}
