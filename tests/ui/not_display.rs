use stormcache::cached;

struct User {
    id: u64,
}

#[cached(key = "user:{user}")]
async fn by_user(user: &User) -> u64 {
    user.id
}

fn main() {}
