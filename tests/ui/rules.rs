use stormcache::{invalidate, InvalidationRule};

struct NotARule {
    user_id: String,
}

#[invalidate(NotARule { user_id: user_id.to_owned() })]
async fn a(user_id: &str) {}

#[derive(InvalidationRule)]
#[invalidates(keys = ["user:{user}"])]
struct UnknownField<'a> {
    user_id: &'a str,
}

#[derive(InvalidationRule)]
struct NothingNamed {
    user_id: String,
}

#[derive(InvalidationRule)]
#[invalidates(keys = ["user:{0}"])]
enum NotAStruct {
    A(u8),
}

#[invalidate("user:1")]
async fn b() {}

fn main() {}
