//! `cache = …` of type `&Cache`: a field holding a reference, an argument, a borrow, a
//! function.
#![deny(warnings)]

use std::sync::LazyLock;

use stormcache::{cached, invalidate, Cache};

static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder("ui").build().expect("valid configuration"));

fn shared() -> &'static Cache {
    &CACHE
}

struct Borrowing<'a> {
    cache: &'a Cache,
}

impl Borrowing<'_> {
    #[cached(key = "field:{id}", cache = self.cache)]
    async fn field(&self, id: u64) -> u64 {
        id
    }

    #[invalidate(keys = ["field:{id}"], cache = self.cache)]
    async fn touch(&self, id: u64) {}
}

#[cached(key = "arg:{id}", cache = cache)]
async fn from_arg(cache: &Cache, id: u64) -> u64 {
    id
}

#[invalidate(keys = ["arg:{id}"], cache = cache)]
async fn touch_arg(cache: &Cache, id: u64) {}

/// The default key leaves out the argument that is the cache.
#[cached(cache = cache)]
async fn default_key(cache: &Cache, id: u64) -> u64 {
    id
}

#[cached(key = "borrowed:{id}", cache = &CACHE)]
async fn borrowed(id: u64) -> u64 {
    id
}

#[cached(key = "fn:{id}", cache = shared())]
async fn from_fn(id: u64) -> u64 {
    id
}

fn main() {
    let b = Borrowing { cache: &CACHE };
    let _ = (b.field(1), b.touch(1), from_arg(&CACHE, 1), touch_arg(&CACHE, 1), from_fn(1));
    let _ = (default_key(&CACHE, 1), default_key_key(&CACHE, 1), borrowed(1));
}
