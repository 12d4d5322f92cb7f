//! The task that invalidates the keys whose write may have left a stale value in Redis (see
//! `Core::take_suspect_writes`): each is a full key invalidation — Redis, this instance, the
//! other instances, journaled if Redis does not answer.

use std::sync::{Arc, Weak};

use super::Invalidator;
use crate::core::Core;
use crate::model::Invalidation;

/// Starts the task; it stops when the last cache handle is dropped.
pub(crate) fn spawn(core: &Arc<Core>, invalidator: &Arc<Invalidator>) {
    let Some(mut suspects) = core.take_suspect_writes() else {
        return;
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    let invalidator = Arc::clone(invalidator);
    tokio::spawn(async move {
        while let Some(key) = suspects.recv().await {
            let Some(core) = weak.upgrade() else { break };
            let report = invalidator
                .invalidate(&core, &Invalidation::new().key(key), None)
                .await;
            tracing::debug!(?report, "suspect write invalidated");
        }
    });
}
