//! Without the `redis` feature there is no Sentinel to watch.

use std::sync::Arc;

use crate::cache::Inner;

pub(crate) fn spawn(_: &Arc<Inner>, _: Option<&str>) {}
