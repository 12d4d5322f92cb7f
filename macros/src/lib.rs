//! Attribute macros for stormcache: `#[cached]`, `#[invalidate]` and `key!`.
//!
//! Use them through the `stormcache` crate (feature `macros`), not directly.
