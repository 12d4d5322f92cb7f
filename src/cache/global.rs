//! The process-wide cache that `#[cached]` and `#[invalidate]` use when given no `cache = …`.

use std::sync::OnceLock;

use super::Cache;
use crate::error::Error;

static GLOBAL: OnceLock<Cache> = OnceLock::new();

/// Installs the process-wide cache, once, at start-up.
///
/// Returns the cache back if one was already installed.
///
/// ```
/// # fn main() -> Result<(), stormcache::Error> {
/// let cache = stormcache::Cache::builder("app").build()?;
/// let _ = stormcache::install(cache);
/// assert!(stormcache::global().is_ok());
/// # Ok(()) }
/// ```
pub fn install(cache: Cache) -> Result<(), Cache> {
    GLOBAL.set(cache)
}

/// The process-wide cache, or [`Error::NotInstalled`] with what to do about it.
pub fn global() -> Result<&'static Cache, Error> {
    GLOBAL.get().ok_or(Error::NotInstalled)
}
