use stormcache::cached;

#[cached(key = "a:{id}", stale_for = "1h")]
async fn a(id: u64) -> u64 {
    id
}

#[cached(key = "b:{id}", cache_none)]
async fn b(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(key = "c:{self.id}")]
async fn c(id: u64) -> u64 {
    id
}

#[cached]
async fn d((x, y): (u8, u8)) -> u8 {
    x + y
}

fn main() {}
