//! The spans a trace shows: names, the fields an operator filters on, and no key values.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use stormcache::{Cache, Class, EntryOptions, Invalidation, Key};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span's id, name and fields.
type Recorded = (u64, &'static str, BTreeMap<String, String>);

/// Every span's name and fields, as recorded (at creation and later).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Recorded>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .expect("lock")
            .push((id.into_u64(), attrs.metadata().name(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().expect("lock");
        if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, ..)| *i == id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    /// A recorder of DEBUG and above, the default subscriber of this thread while the guard
    /// lives.
    fn installed() -> (Spans, tracing::subscriber::DefaultGuard) {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(
            spans
                .clone()
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        );
        (spans, tracing::subscriber::set_default(subscriber))
    }

    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(_, _, f)| f.clone())
            .collect()
    }
}

#[tokio::test]
async fn reads_and_invalidations_are_spans_with_their_result_and_without_key_values() {
    let (spans, _guard) = Spans::installed();

    let cache = Cache::builder("traced")
        .class(Class::new("permissions").volatile())
        .build()
        .expect("valid configuration");
    let opts = EntryOptions::new()
        .class("permissions")
        .key_template("user:groups:{user}");
    let key = Key::builder("user:groups:")
        .value("alice@example.com")
        .build();
    let _: u32 = cache.get_or_load(key.clone(), &opts, || async { 1 }).await;
    let _: u32 = cache.get_or_load(key.clone(), &opts, || async { 1 }).await;
    cache.invalidate(&Invalidation::new().key(key)).await;

    let reads = spans.named("stormcache.fetch");
    let results: Vec<&str> = reads
        .iter()
        .map(|f| f.get("cache.result").map_or("", String::as_str))
        .collect();
    assert_eq!(results, ["miss", "l1_hit"]);
    for read in &reads {
        assert_eq!(read["cache.namespace"], "traced");
        assert_eq!(read["cache.class"], "permissions");
        assert_eq!(read["cache.key_template"], "user:groups:{user}");
    }
    let invalidations = spans.named("stormcache.invalidate");
    assert_eq!(invalidations.len(), 1);
    assert_eq!(invalidations[0]["keys"], "1");
    assert_eq!(invalidations[0]["cache.outcome"], "local_only");
    let all = spans.0.lock().expect("lock");
    assert!(
        all.iter()
            .all(|(_, _, fields)| fields.values().all(|v| !v.contains("alice"))),
        "a key value was recorded: {:?}",
        all.iter().map(|(_, n, f)| (n, f)).collect::<Vec<_>>()
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_commands_are_spans_named_as_opentelemetry_has_them() {
    let server = support::RedisServer::start();
    let (spans, _guard) = Spans::installed();
    let cache = Cache::builder("traced-redis")
        .redis_url(server.url())
        .build()
        .expect("valid configuration");
    cache.ready().await;
    let _: u32 = cache
        .get_or_load(
            Key::literal("k").expect("key"),
            &EntryOptions::new(),
            || async { 1 },
        )
        .await;

    let commands = spans.named("redis");
    assert!(!commands.is_empty(), "a miss reads Redis");
    for command in &commands {
        assert_eq!(command["db.system.name"], "redis");
        assert_eq!(command["server.address"], server.addr());
        assert!(!command["db.operation.name"].is_empty());
    }
}
