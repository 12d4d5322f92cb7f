//! Everything a service file typically writes compiles without warnings.
#![deny(warnings)]

use std::sync::LazyLock;

use stormcache::{cached, invalidate, Cache, InvalidationRule};

static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder("ui").build().expect("valid configuration"));

#[derive(InvalidationRule)]
#[invalidates(keys = ["user:groups:{user_id}"])]
struct UserGroups<'a> {
    user_id: &'a str,
}

/// Public, documented: the companions are documented too (missing_docs stays quiet).
#[cached(key = "user:groups:{user_id}", ttl = "15m", cache = CACHE)]
pub async fn user_groups(user_id: &str) -> Result<Vec<String>, std::io::Error> {
    Ok(vec![user_id.to_owned()])
}

#[invalidate(UserGroups { user_id }, cache = CACHE)]
async fn leave(user_id: &str, mut group: String) -> Result<(), std::io::Error> {
    group.push('!');
    Ok(())
}

trait Repo {
    async fn load(&self, id: u64) -> Option<String>;
}

struct Db {
    cache: Cache,
}

impl Repo for Db {
    #[cached(key = "row:{id}", cache = self.cache, companions = false)]
    async fn load(&self, id: u64) -> Option<String> {
        Some(id.to_string())
    }
}

fn main() {
    let _ = (leave, user_groups);
    let _ = Db { cache: CACHE.clone() }.load(1);
}
