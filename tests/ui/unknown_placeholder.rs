use stormcache::cached;

#[cached(key = "user:groups:{usr}")]
async fn user_groups(user: &str) -> Vec<String> {
    vec![user.to_owned()]
}

#[cached(key = "user:{user.id}", tags = ["team:{team}"])]
async fn user_name(user: &User) -> String {
    user.id.to_string()
}

struct User {
    id: u64,
}

fn main() {}
