//! The authenticated admin router: status, invalidation and flushes.
