//! A permissions API (resources, users, groups) as an axum service, cached with stormcache:
//! the README's main command.
//!
//! ```text
//! cargo run --example axum_app                                        # local store only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_app       # with Redis
//! REDIS_URL='redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster' cargo run --example axum_app
//! ```
//!
//! | request | answer | cached |
//! |---|---|---|
//! | `GET /resources` | every resource | `resources:all`, 12 h, class `resources` |
//! | `GET /users/{id}/groups` | the user's groups | `user:groups:{id}`, 15 min, class `permissions` (volatile) |
//! | `GET /users/{id}/resources` | the resources the user's groups may see | `resources:{id}`, 15 min, `permissions`, derived from both |
//! | `POST /groups/{g}/members/{u}` | adds `u` to `g` | invalidates `user:groups:{u}`, `resources:{u}`, tag `user:{u}` |
//! | `DELETE /groups/{g}/members/{u}` | removes `u` from `g` | the same |
//! | `/admin/status`, `/admin/invalidate`, `/admin/flush` | operator endpoints | bearer token from `ADMIN_TOKEN` |
//! | `/admin/healthz`, `/admin/readyz` | liveness, readiness (Redis in use and coherent, or no Redis configured) | no credentials |
//! | `/metrics` | Prometheus metrics (see `dashboards/stormcache.json`) | no credentials |
//!
//! Two levels of caching are at work. The handlers read the "database" through
//! [`Cache::get_or_load`] — three layers of different volatility — and the GET
//! routes also cache their whole HTTP response with [`CacheLayer`] (see `x-cache` and `age`
//! in the answers). The mutation routes carry an [`InvalidateLayer`] that removes, after a
//! successful change, the keys in the table above and every entry tagged with the user: the
//! data entries and the cached responses alike.
//!
//! Environment: `APP_ADDR` (default `127.0.0.1:3000`; port 0 picks one, logged),
//! `REDIS_URL` (none: local store only), `ADMIN_TOKEN` (none: the admin endpoints answer
//! 401), `RUST_LOG` (default `info`).
//!
//! ```text
//! curl -i localhost:3000/users/alice/resources
//! curl -i -X DELETE localhost:3000/groups/ops/members/alice
//! curl -i localhost:3000/users/alice/resources
//! curl -H "authorization: Bearer $ADMIN_TOKEN" localhost:3000/admin/status
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use stormcache::layer::{CacheLayer, InvalidateLayer};
use stormcache::{Cache, Class, EntryOptions, Key, KeyTemplate};
use tokio::net::TcpListener;

/// How long a simulated database query takes: what the cache saves.
pub const DB_LATENCY: Duration = Duration::from_millis(5);

/// A resource and the groups whose members may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Its name.
    pub name: String,
    /// Groups allowed to see it.
    pub groups: Vec<String>,
}

/// The origin: a tiny in-memory "database".
#[derive(Clone)]
pub struct Db {
    tables: Arc<Mutex<Tables>>,
}

struct Tables {
    resources: Vec<Resource>,
    members: BTreeMap<String, BTreeSet<String>>,
    queries: u64,
}

impl Default for Db {
    /// alice is in staff and ops, bob in staff, carol in admins.
    fn default() -> Self {
        let resource = |name: &str, groups: &[&str]| Resource {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        let member = |user: &str, groups: &[&str]| {
            (
                user.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            )
        };
        Db {
            tables: Arc::new(Mutex::new(Tables {
                resources: vec![
                    resource("handbook", &["staff", "ops", "admins"]),
                    resource("wiki", &["staff"]),
                    resource("ci", &["ops"]),
                    resource("billing", &["admins"]),
                ],
                members: BTreeMap::from([
                    member("alice", &["staff", "ops"]),
                    member("bob", &["staff"]),
                    member("carol", &["admins"]),
                ]),
                queries: 0,
            })),
        }
    }
}

impl Db {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn query<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        tokio::time::sleep(DB_LATENCY).await;
        let mut tables = self.lock();
        tables.queries += 1;
        f(&mut tables)
    }

    /// Queries run so far.
    pub fn queries(&self) -> u64 {
        self.lock().queries
    }

    async fn all_resources(&self) -> Vec<Resource> {
        self.query(|t| t.resources.clone()).await
    }

    async fn groups_of(&self, user: &str) -> Option<BTreeSet<String>> {
        self.query(|t| t.members.get(user).cloned()).await
    }

    /// Adds or removes a membership; `None` when the user is unknown, else whether it changed.
    async fn set_member(&self, group: &str, user: &str, member: bool) -> Option<bool> {
        let (group, user) = (group.to_owned(), user.to_owned());
        self.query(move |t| {
            let groups = t.members.get_mut(&user)?;
            Some(if member {
                groups.insert(group)
            } else {
                groups.remove(&group)
            })
        })
        .await
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The cache.
    pub cache: Cache,
    /// The origin.
    pub db: Db,
}

/// The cache this app uses: two classes, `permissions` (15 min, volatile: group memberships
/// change and matter for security) and `resources` (12 h, stable metadata).
pub fn build_cache(redis_url: Option<String>) -> Result<Cache, stormcache::Error> {
    Cache::builder("stormcache-example")
        .redis_url(redis_url)
        .class(
            Class::new("permissions")
                .ttl(Duration::from_secs(15 * 60))
                .volatile(),
        )
        .class(Class::new("resources").ttl(Duration::from_secs(12 * 3600)))
        .build()
}

fn user_tag(user: &str) -> Key {
    Key::builder("user:").value(user).build()
}

/// Layer 1: every resource (`resources:all`, 12 h).
async fn all_resources(state: &AppState) -> Vec<Resource> {
    let key = Key::builder("resources:all").build();
    let opts = EntryOptions::new().class("resources");
    state
        .cache
        .get_or_load(key, &opts, || state.db.all_resources())
        .await
}

/// Layer 2: a user's groups (`user:groups:{user}`, 15 min, volatile). `None`: no such
/// user (not cached, so a user created later is seen at once).
async fn user_groups(state: &AppState, user: &str) -> Option<BTreeSet<String>> {
    let key = Key::builder("user:groups:").value(user).build();
    let opts = EntryOptions::new().class("permissions").tag(user_tag(user));
    state
        .cache
        .try_get_or_load(key, &opts, || async {
            state.db.groups_of(user).await.ok_or(())
        })
        .await
        .ok()
}

/// Layer 3: what a user may see (`resources:{user}`), derived from the two others.
async fn visible_resources(state: &AppState, user: &str) -> Option<Vec<Resource>> {
    let key = Key::builder("resources:").value(user).build();
    let opts = EntryOptions::new().class("permissions").tag(user_tag(user));
    state
        .cache
        .try_get_or_load(key, &opts, || async {
            let groups = user_groups(state, user).await.ok_or(())?;
            let all = all_resources(state).await;
            Ok::<_, ()>(
                all.into_iter()
                    .filter(|r| r.groups.iter().any(|g| groups.contains(g)))
                    .collect(),
            )
        })
        .await
        .ok()
}

fn no_such_user(user: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no user `{user}`\n")).into_response()
}

async fn get_resources(State(state): State<AppState>) -> Json<Vec<Resource>> {
    Json(all_resources(&state).await)
}

async fn get_user_groups(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    match user_groups(&state, &user).await {
        Some(groups) => Json(groups).into_response(),
        None => no_such_user(&user),
    }
}

async fn get_user_resources(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    match visible_resources(&state, &user).await {
        Some(resources) => Json(resources).into_response(),
        None => no_such_user(&user),
    }
}

async fn add_member(
    State(state): State<AppState>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    match state.db.set_member(&group, &user, true).await {
        Some(true) => StatusCode::CREATED.into_response(),
        Some(false) => StatusCode::OK.into_response(),
        None => no_such_user(&user),
    }
}

async fn remove_member(
    State(state): State<AppState>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    match state.db.set_member(&group, &user, false).await {
        Some(true) => StatusCode::NO_CONTENT.into_response(),
        Some(false) => (
            StatusCode::NOT_FOUND,
            format!("`{user}` is not in `{group}`\n"),
        )
            .into_response(),
        None => no_such_user(&user),
    }
}

/// The whole application: the routes listed in the module docs over `db`, the admin router
/// under `/admin`.
pub fn app(
    cache: Cache,
    db: Db,
    admin_token: Option<String>,
    metrics: Option<PrometheusHandle>,
) -> Result<Router, stormcache::Error> {
    let template = KeyTemplate::parse;
    // Per-user responses: volatile like the data they show, tagged with the user.
    let per_user = CacheLayer::new(cache.clone())
        .class("permissions")
        .ttl(Duration::from_secs(15 * 60))
        .tag_template(template("user:{id}")?);
    // After a membership change the user's groups and the resources derived from them are
    // stale, and so is everything tagged with the user (the cached responses included).
    let membership_changed = InvalidateLayer::new(cache.clone())
        .key(template("user:groups:{u}")?)
        .key(template("resources:{u}")?)
        .tag(template("user:{u}")?);

    let mut router = Router::new();
    if let Some(handle) = metrics {
        router = router.route("/metrics", get(move || async move { handle.render() }));
    }
    Ok(router
        .route(
            "/resources",
            get(get_resources).route_layer(CacheLayer::new(cache.clone()).class("resources")),
        )
        .route(
            "/users/{id}/groups",
            get(get_user_groups).route_layer(per_user.clone()),
        )
        .route(
            "/users/{id}/resources",
            get(get_user_resources).route_layer(per_user),
        )
        .route(
            "/groups/{g}/members/{u}",
            axum::routing::post(add_member)
                .delete(remove_member)
                .route_layer(membership_changed),
        )
        .nest(
            "/admin",
            stormcache::admin::router(cache.clone(), admin_token),
        )
        .with_state(AppState { cache, db }))
}

/// The process's Prometheus recorder, installed on first call. Caches register their series
/// when they are built, so this comes first. `None` if another recorder was installed.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

/// Where the app listens and what it talks to, from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `APP_ADDR`, default `127.0.0.1:3000`.
    pub addr: String,
    /// `REDIS_URL`; `None` or empty: local store only.
    pub redis_url: Option<String>,
    /// `ADMIN_TOKEN`; `None`: the admin endpoints refuse everything.
    pub admin_token: Option<String>,
}

impl Settings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Settings {
            addr: var("APP_ADDR").unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
            redis_url: var("REDIS_URL"),
            admin_token: var("ADMIN_TOKEN"),
        }
    }
}

/// A URL with its password hidden, for logs.
fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Binds, logs where and in which mode, and returns the listener with the app.
pub async fn start(
    settings: Settings,
) -> Result<(TcpListener, Router, SocketAddr), Box<dyn std::error::Error>> {
    let metrics = prometheus();
    let cache = build_cache(settings.redis_url.clone())?;
    let listener = TcpListener::bind(&settings.addr).await?;
    let addr = listener.local_addr()?;
    match &settings.redis_url {
        Some(url) => {
            tracing::info!(%addr, mode = "redis", redis = %masked(url), "stormcache example listening on http://{addr}")
        }
        None => {
            tracing::info!(%addr, mode = "local", "stormcache example listening on http://{addr} (no REDIS_URL: local store only)")
        }
    }
    if settings.admin_token.is_none() {
        tracing::info!("no ADMIN_TOKEN: /admin answers 401");
    }
    let app = app(cache, Db::default(), settings.admin_token, metrics)?;
    Ok((listener, app, addr))
}

#[allow(dead_code)] // the e2e test includes this file and has its own entry point
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (listener, app, _) = start(Settings::from_env()).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await?;
    Ok(())
}
