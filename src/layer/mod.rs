//! Tower layers for axum: response caching and invalidation on mutating routes.
