//! `cache = …` of type `Cache`: a field, and an argument taken by value.
#![deny(warnings)]

use stormcache::{cached, invalidate, Cache};

struct Owning {
    cache: Cache,
}

impl Owning {
    #[cached(key = "field:{id}", cache = self.cache)]
    async fn field(&self, id: u64) -> u64 {
        id
    }

    #[invalidate(keys = ["field:{id}"], cache = self.cache)]
    async fn touch(&mut self, id: u64) {}
}

#[cached(key = "arg:{id}", cache = cache)]
async fn from_arg(cache: Cache, id: u64) -> u64 {
    id
}

#[invalidate(keys = ["arg:{id}"], cache = cache)]
async fn touch_arg(cache: Cache, id: u64) {}

fn main() {
    let cache = Cache::builder("ui").build().expect("valid configuration");
    let mut owning = Owning {
        cache: cache.clone(),
    };
    let _ = owning.field(1);
    let _ = owning.touch(1);
    let _ = (from_arg(cache.clone(), 1), touch_arg(cache, 1));
}
