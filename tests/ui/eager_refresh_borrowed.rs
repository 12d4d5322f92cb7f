// Eager refresh reloads after the call has returned: the loader cannot borrow.
use stormcache::cached;

#[cached(key = "user:{user}", eager_refresh = "80%")]
async fn user(user: &str) -> String {
    user.to_owned()
}

#[cached(key = "bad:{id}", eager_refresh = "180%")]
async fn bad(id: u32) -> u32 {
    id
}

fn main() {}
