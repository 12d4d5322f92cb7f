use stormcache::{cached, invalidate};

#[cached(key = "user:groups:{user}")]
fn user_groups(user: &str) -> Vec<String> {
    vec![user.to_owned()]
}

#[invalidate(keys = ["user:groups:{user}"])]
fn remove_user(user: &str) {
    let _ = user;
}

fn main() {}
