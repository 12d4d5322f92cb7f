use stormcache::cached;

#[cached(key = "a", ttl = "15x")]
async fn a() -> u8 {
    1
}

#[cached(key = "b", ttl = "0s")]
async fn b() -> u8 {
    1
}

#[cached(key = "c", ttl = "15")]
async fn c() -> u8 {
    1
}

fn main() {}
