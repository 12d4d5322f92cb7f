//! `cache = …` naming a `static`: a `LazyLock<Cache>`, and a `static` reference to one.
#![deny(warnings)]

use std::sync::LazyLock;

use stormcache::{cached, invalidate, Cache};

static LAZY: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder("ui").build().expect("valid configuration"));

static BY_REF: &LazyLock<Cache> = &LAZY;

#[cached(key = "lazy:{id}", cache = LAZY)]
async fn lazy(id: u64) -> u64 {
    id
}

#[invalidate(keys = ["lazy:{id}"], cache = LAZY)]
async fn touch_lazy(id: u64) {}

#[cached(key = "by-ref:{id}", cache = BY_REF)]
async fn by_ref(id: u64) -> u64 {
    id
}

#[invalidate(keys = ["by-ref:{id}"], cache = BY_REF)]
async fn touch_by_ref(id: u64) {}

fn main() {
    let _ = (lazy(1), touch_lazy(1), by_ref(1), touch_by_ref(1));
}
