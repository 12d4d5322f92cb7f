use stormcache::{cached, invalidate};

struct Service {
    name: String,
}

impl Service {
    #[cached(key = "user:{user}", cache = self.name)]
    async fn user(&self, user: &str) -> String {
        user.to_owned()
    }

    #[invalidate(keys = ["user:{user}"], cache = self.name)]
    async fn rename(&self, user: &str) {
        let _ = user;
    }
}

fn main() {}
