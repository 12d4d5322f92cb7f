//! `cache = …` of type `Arc<Cache>`: a field, and an argument taken by value.
#![deny(warnings)]

use std::sync::Arc;

use stormcache::{cached, invalidate, Cache};

struct Shared {
    cache: Arc<Cache>,
}

impl Shared {
    #[cached(key = "field:{id}", cache = self.cache)]
    async fn field(&self, id: u64) -> u64 {
        id
    }

    #[invalidate(keys = ["field:{id}"], cache = self.cache)]
    async fn touch(&self, id: u64) {}
}

#[cached(key = "arg:{id}", cache = cache)]
async fn from_arg(cache: Arc<Cache>, id: u64) -> u64 {
    id
}

#[invalidate(keys = ["arg:{id}"], cache = cache)]
async fn touch_arg(cache: Arc<Cache>, id: u64) {}

fn main() {
    let cache = Arc::new(Cache::builder("ui").build().expect("valid configuration"));
    let shared = Shared {
        cache: Arc::clone(&cache),
    };
    let _ = (shared.field(1), shared.touch(1));
    let _ = (from_arg(Arc::clone(&cache), 1), touch_arg(cache, 1));
}
