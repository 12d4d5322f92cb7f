//! Values no other call, in this process or any other, returns.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A 64-bit value unique to this call: a counter within the process, hashed with a key drawn
/// at random once per process, so that two processes collide with odds of 2⁻⁶⁴ per pair of
/// values rather than whenever their counters meet.
pub(crate) fn nonce() -> u64 {
    static SEED: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    SEED.get_or_init(RandomState::new)
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::nonce;

    #[test]
    fn nonces_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(nonce()));
        }
    }
}
