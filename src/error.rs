//! The crate's error type.
//!
//! Few calls return it: configuration (a bad URL, namespace or template) is an error, but a
//! sick Redis never is. Reads fall back to the local store or the loader and invalidations
//! are journaled, so a request does not fail because of the cache.

/// What can go wrong while configuring stormcache or talking to Redis directly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key template or literal key that would be unsafe in a pattern.
    #[error("invalid key template `{template}`: {reason}")]
    InvalidTemplate {
        /// The template as written.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A template was rendered without a value for one of its placeholders.
    #[error("key template `{template}` has no value for `{{{placeholder}}}`")]
    MissingPlaceholder {
        /// The template as written.
        template: String,
        /// The placeholder that had no value.
        placeholder: String,
    },
    /// A namespace or class name outside `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid {what} name `{name}`: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    InvalidName {
        /// `namespace` or `class`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A class named twice, or a configuration value out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Redis URL could not be understood.
    #[error("invalid Redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Redis URL was given but stormcache was built without the `redis` feature.
    #[error("a Redis URL was given but stormcache was built without the `redis` feature")]
    RedisDisabled,
    /// Connecting to Redis needs a Tokio runtime.
    #[error("connecting to Redis needs a Tokio runtime: build the cache inside one (e.g. in `#[tokio::main]`)")]
    NoRuntime,
    /// A Redis command failed. Reads and invalidations absorb these (they fall back to the
    /// local store or the journal); the kind tells a timeout from a lost connection or a
    /// refusal, for whoever logs or counts them.
    #[error("Redis ({kind}): {message}")]
    Redis {
        /// What kind of failure.
        kind: RedisErrorKind,
        /// What the client or the server said.
        message: String,
    },
    /// Too many Redis commands were in flight: this one was skipped rather than queued.
    #[error("too many Redis commands in flight; skipped")]
    Overloaded,
    /// A value could not be encoded.
    #[error("could not encode a value: {0}")]
    Encode(String),
    /// Cached bytes could not be decoded (treated as a miss by every read path).
    #[error("could not decode cached bytes: {0}")]
    Decode(String),
    /// A cached function was called before a process-wide cache was installed.
    #[error("no process-wide stormcache::Cache is installed: call `stormcache::install(cache)` once at start-up, or pass `cache = ...` to the attribute")]
    NotInstalled,
    /// A load passed its hard timeout with no stale value to answer instead.
    #[error(transparent)]
    LoadTimeout(#[from] LoadTimeout),
}

/// What kind of Redis failure an [`Error::Redis`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisErrorKind {
    /// No answer within the deadline.
    Timeout,
    /// The connection failed, closed or could not be routed (I/O, Sentinel, Cluster).
    Connection,
    /// The server answered with an error (a refused command, authentication, a script).
    Refused,
    /// Anything else: a reply that did not parse, a cancelled command, a client error.
    Other,
}

impl std::fmt::Display for RedisErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisErrorKind::Timeout => "timeout",
            RedisErrorKind::Connection => "connection",
            RedisErrorKind::Refused => "refused",
            RedisErrorKind::Other => "other",
        })
    }
}

impl Error {
    /// A Redis failure of `kind`.
    pub(crate) fn redis(kind: RedisErrorKind, message: impl Into<String>) -> Self {
        Error::Redis {
            kind,
            message: message.into(),
        }
    }

    /// A command that got no answer within `deadline`.
    pub(crate) fn redis_timeout(what: &str, deadline: std::time::Duration) -> Self {
        Error::redis(
            RedisErrorKind::Timeout,
            format!("{what}: no answer within {deadline:?}"),
        )
    }

    /// The kind of a Redis failure; `None` for other errors.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_kind(&self) -> Option<RedisErrorKind> {
        match self {
            Error::Redis { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// A load gave up at its hard timeout ([`EntryOptions::hard_timeout`]) with no stale value to
/// answer instead.
///
/// A call whose options set a hard timeout can fail with it, so the loader's error type of
/// [`Cache::fetch`] and [`Cache::try_get_or_load`] converts from it (or is `Infallible`, see
/// [`LoadError`]). The usual error types
/// already do: `std::io::Error` (as [`TimedOut`](std::io::ErrorKind::TimedOut)), [`Error`],
/// `Box<dyn std::error::Error + Send + Sync>` and `anyhow::Error` (it is an
/// [`std::error::Error`]), `String`, `&'static str` and `()`. An error enum of your own takes
/// it as one more variant:
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// enum LoadError {
///     #[error("database: {0}")]
///     Database(String),
///     #[error(transparent)]
///     TimedOut(#[from] stormcache::LoadTimeout),
/// }
/// ```
///
/// [`EntryOptions::hard_timeout`]: crate::EntryOptions::hard_timeout
/// [`Cache::fetch`]: crate::Cache::fetch
/// [`Cache::try_get_or_load`]: crate::Cache::try_get_or_load
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the load did not finish within its hard timeout of {after:?}")]
pub struct LoadTimeout {
    after: std::time::Duration,
}

impl LoadTimeout {
    pub(crate) fn new(after: std::time::Duration) -> Self {
        LoadTimeout { after }
    }

    /// The hard timeout that passed.
    pub fn after(&self) -> std::time::Duration {
        self.after
    }
}

/// The error type of a loader: one that can carry a [`LoadTimeout`] (every type that
/// converts from it), or [`Infallible`](std::convert::Infallible) for loaders that cannot
/// fail — which then wait for their loader past a hard timeout, having nothing else to
/// answer when no stale value is at hand.
///
/// Implemented for you: there is nothing to implement.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot carry a load timeout: it does not implement `From<stormcache::LoadTimeout>`",
    label = "a read with a hard timeout can fail with `stormcache::LoadTimeout`",
    note = "add a variant to the error type, like `#[error(transparent)] TimedOut(#[from] \
            stormcache::LoadTimeout)` with thiserror, or implement `From<stormcache::LoadTimeout>`"
)]
pub trait LoadError: Sized {
    /// How a hard timeout becomes this error, if it can.
    #[doc(hidden)]
    fn timeout_carrier() -> Option<fn(LoadTimeout) -> Self>;
}

impl<E: From<LoadTimeout>> LoadError for E {
    fn timeout_carrier() -> Option<fn(LoadTimeout) -> Self> {
        Some(E::from)
    }
}

impl LoadError for std::convert::Infallible {
    fn timeout_carrier() -> Option<fn(LoadTimeout) -> Self> {
        None
    }
}

impl From<LoadTimeout> for std::io::Error {
    fn from(timeout: LoadTimeout) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, timeout)
    }
}

impl From<LoadTimeout> for String {
    fn from(timeout: LoadTimeout) -> Self {
        timeout.to_string()
    }
}

impl From<LoadTimeout> for &'static str {
    fn from(_: LoadTimeout) -> Self {
        "the load did not finish within its hard timeout"
    }
}

impl From<LoadTimeout> for () {
    fn from(_: LoadTimeout) -> Self {}
}
