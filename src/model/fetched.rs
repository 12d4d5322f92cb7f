//! What a read returns: the value, and where it came from.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The local store (L1).
    Local,
    /// Redis (L2).
    Redis,
    /// The loader ran.
    Loader,
    /// The loader failed and an expired value inside its grace was served.
    Stale,
}

/// A value and where it came from. See [`Cache::fetch`](crate::Cache::fetch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

/// The bounds of a cacheable value.
///
/// Implemented for every `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`
/// type.
pub trait Cacheable: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Cacheable for T {}
