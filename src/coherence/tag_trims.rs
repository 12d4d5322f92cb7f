//! The task that trims the Redis sets of the tags the core reports as due (see
//! `Core::take_tag_trims`), one at a time, off the request path.

use std::sync::{Arc, Weak};

use crate::core::Core;

/// Starts the task; it stops when the last cache handle is dropped.
pub(crate) fn spawn(core: &Arc<Core>) {
    let Some(mut due) = core.take_tag_trims() else {
        return;
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    tokio::spawn(async move {
        while let Some(tag) = due.recv().await {
            let Some(core) = weak.upgrade() else { break };
            if let Err(error) = core.trim_tag(&tag).await {
                tracing::debug!(%tag, %error, "tag set not trimmed; a later write asks again");
            }
        }
    });
}
