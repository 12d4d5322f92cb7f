use stormcache::{cached, invalidate};

#[cached(key = "a", tll = "15m")]
async fn a() -> u8 {
    1
}

#[invalidate(keyz = ["a"])]
async fn b() {}

#[cached(key = "c", ttl = "1m", ttl = "2m")]
async fn c() -> u8 {
    1
}

fn main() {}
