use stormcache::{cached, key};

#[cached(key = "user:*:{id}")]
async fn a(id: u64) -> u64 {
    id
}

#[cached(key = "user:{id")]
async fn b(id: u64) -> u64 {
    id
}

#[cached(key = "user:{}")]
async fn c(id: u64) -> u64 {
    id
}

#[cached(class = "perm issions")]
async fn d() -> u64 {
    1
}

fn main() {
    let _ = key!("a b:{}", 1);
    let _ = key!("a:{}:{}", 1);
    let _ = key!("a:{}", 1, 2);
}
