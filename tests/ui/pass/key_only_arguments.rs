//! An argument that only the key (or the invalidation) uses is no unused variable: not in the
//! function, nor in its companions.
#![deny(warnings)]

use std::sync::LazyLock;

use stormcache::{cached, invalidate, Cache};

static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder("ui").build().expect("valid configuration"));

#[cached(key = "version:{id}", cache = CACHE)]
async fn version(id: u64) -> u32 {
    7
}

/// The process-wide cache, a dotted placeholder and a tag.
#[cached(key = "user:{user.0}:{page}", tags = ["tenant:{tenant}"])]
async fn page(user: (u64,), page: u32, tenant: &str) -> Vec<u8> {
    Vec::new()
}

#[invalidate(keys = ["version:{id}"], cache = CACHE)]
async fn bump(id: u64) {}

#[invalidate(tags = ["tenant:{tenant}"])]
async fn reset(tenant: String) -> Result<(), std::io::Error> {
    Ok(())
}

struct Repo;

impl Repo {
    #[cached(key = "row:{id}", cache = CACHE)]
    async fn row(&self, id: u64) -> Option<String> {
        None
    }
}

fn main() {
    let _ = (version(1), page((1,), 2, "t"), bump(1), reset("t".to_owned()), Repo.row(1));
}
