// A hard timeout can fail the call, so the error type must be able to say so.
use stormcache::cached;

#[derive(Debug)]
struct DbError;

#[cached(key = "price:{sku}", hard_timeout = "2s")]
async fn price(sku: &str) -> Result<u64, DbError> {
    let _ = sku;
    Ok(1)
}

fn main() {}
