//! Connections to one Redis ([`RedisStore`]): a pool of blocking connections
//! for synchronous checks and one multiplexed (pipelining) tokio connection for
//! async ones, to a standalone server, a Cluster or the master Sentinel names.
//! The command timeout is a deadline for a whole call; connections are made at
//! build and then off the request path (a background thread for the pool, a
//! spawned task for the async connection), never inside a call. One
//! [`Breaker`] per store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};

use super::breaker::Breaker;
use super::limiter::{RedisLimiterBuilder, StoreSource};
use super::units::Micros;
use super::{blocking, io_error, script, unavailable};

// Built once per store: the size difference (TLS settings) costs nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
    /// The master that Sentinel names: asked again at every (background)
    /// connect, so a failover is followed as soon as the sentinels agree.
    /// The client asking the sentinels keeps its connections to them, so each
    /// process has its own ([`Conns::sentinel`]); this is what it is built from.
    Sentinel(Box<SentinelSpec>),
}

/// What a Sentinel store's client is built from.
struct SentinelSpec {
    /// The sentinels' URLs; the first with a user or password gives them for all.
    urls: Vec<String>,
    /// The monitored master's name.
    master: String,
    /// How to talk to the master once named.
    node: SentinelMaster,
    /// The CA certificates for `rediss://` sentinels and a TLS master.
    ca_pem: Option<Vec<u8>>,
}

/// How a Sentinel store connects to the master the sentinels name: the
/// sentinels give its address only, so its user, password, database and TLS
/// are given here ([`RedisStoreBuilder::master_auth`] and the policy's
/// `master_user`, `master_password`, `master_db`, `master_tls`).
#[derive(Clone, Default)]
struct SentinelMaster {
    user: Option<String>,
    password: Option<String>,
    db: i64,
    tls: bool,
}

// Passwords never reach Debug output.
impl std::fmt::Debug for SentinelMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelMaster")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What redis-rs verifies a server's certificate against: the CA
/// certificates given (`ca_pem`), or the system's trust store.
fn certificates(ca_pem: Option<&Vec<u8>>) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: ca_pem.cloned(),
    }
}

impl Client {
    /// A client asking the sentinels, with no connection to them yet (None
    /// when this store is not on Sentinel).
    fn sentinel(&self) -> redis::RedisResult<Option<redis::sentinel::SentinelClient>> {
        use redis::IntoConnectionInfo;
        let Self::Sentinel(spec) = self else {
            return Ok(None);
        };
        let mut addrs = Vec::with_capacity(spec.urls.len());
        let mut sentinel_auth = None;
        let mut sentinel_tls = false;
        for url in &spec.urls {
            let info = url.as_str().into_connection_info()?;
            let settings = info.redis_settings();
            if sentinel_auth.is_none()
                && (settings.username().is_some() || settings.password().is_some())
            {
                sentinel_auth = Some((
                    settings.username().map(str::to_string),
                    settings.password().map(str::to_string),
                ));
            }
            sentinel_tls |= matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
            addrs.push(info.addr().clone());
        }
        let mut b = redis::sentinel::SentinelClientBuilder::new(
            addrs,
            &spec.master,
            redis::sentinel::SentinelServerType::Master,
        )?
        .set_client_to_redis_db(spec.node.db);
        if let Some((user, password)) = sentinel_auth {
            if let Some(user) = user {
                b = b.set_client_to_sentinel_username(user);
            }
            if let Some(password) = password {
                b = b.set_client_to_sentinel_password(password);
            }
        }
        if let Some(user) = &spec.node.user {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = &spec.node.password {
            b = b.set_client_to_redis_password(password);
        }
        let certs = || certificates(spec.ca_pem.as_ref());
        if spec.node.tls {
            b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if spec.ca_pem.is_some() {
                b = b.set_client_to_redis_certificates(certs());
            }
        }
        if sentinel_tls && spec.ca_pem.is_some() {
            b = b.set_client_to_sentinel_certificates(certs());
        }
        b.build().map(Some)
    }
}

pub(super) enum SyncConn {
    /// Standalone and Sentinel's master: reads and writes bounded by the
    /// call's deadline to within a thread's wake-up ([`blocking::Conn`]).
    Timed(blocking::Conn),
    /// Kept for `rediss://...#insecure` (which redis-rs refuses without its
    /// `tls-rustls-insecure` feature: the same error as before).
    Single(redis::Connection),
    Cluster(Box<ClusterConn>),
}

impl SyncConn {
    pub(super) fn as_dyn(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Self::Timed(c) => c,
            Self::Single(c) => c,
            Self::Cluster(c) => c.as_mut(),
        }
    }
}

/// A Cluster's blocking connection: redis-rs's async Cluster connection on a
/// current-thread runtime of its own, driven by the calling thread
/// (`block_on`) until the call's deadline. redis-rs's blocking Cluster
/// connection bounded reads by socket timeouts (kernel ticks), retried a
/// timed-out request and refreshed its slots or reconnected inside the call
/// (a 20 ms call took 48 ms with a node frozen), and one frozen node broke
/// it for every key. The async one gives up at the deadline, keeps
/// reconnecting a node in its own tasks (they run while calls drive the
/// runtime), and keeps serving the other nodes. Its calls do their I/O on
/// the caller's thread, as a blocking connection does: through the store's
/// background runtime instead, sequential checks ran at a 27-36% lower rate.
pub(super) struct ClusterConn {
    /// Always `Some` until dropped (taken to shut down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    conn: redis::cluster_async::ClusterConnection,
    deadline: Instant,
}

impl ClusterConn {
    fn connect(
        client: &redis::cluster::ClusterClient,
        deadline: Instant,
    ) -> redis::RedisResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| io_error("cannot start a runtime for the Cluster connection"))?;
        let conn = drive(
            &rt,
            bounded(
                deadline,
                client.get_async_connection(),
                "connecting to the Cluster took too long",
            ),
        )??;
        Ok(Self {
            rt: Some(rt),
            conn,
            deadline,
        })
    }
}

/// `rt.block_on(f)` on this thread, or, inside another runtime (where
/// `block_on` would panic: a blocking check called from async code), on a
/// thread of its own.
fn drive<F>(rt: &tokio::runtime::Runtime, f: F) -> redis::RedisResult<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join())
        .map_err(|_| io_error("the Cluster call's thread failed"))
}

impl Drop for ClusterConn {
    fn drop(&mut self) {
        // Without waiting for its tasks, so that dropping it anywhere (even in
        // async code) neither blocks nor panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl redis::ConnectionLike for ClusterConn {
    /// Routed by the command (its keys), as redis-rs's Cluster client routes it.
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        use redis::aio::ConnectionLike as _;
        let Self { rt, conn, deadline } = self;
        let rt = rt
            .as_ref()
            .ok_or_else(|| io_error("the Cluster connection is closed"))?;
        drive(
            rt,
            bounded(
                *deadline,
                conn.req_packed_command(cmd),
                "the call's deadline passed",
            ),
        )?
    }

    fn req_packed_command(&mut self, _cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        Err(io_error("a Cluster routes commands, not packed bytes"))
    }

    fn req_packed_commands(
        &mut self,
        _cmd: &[u8],
        _offset: usize,
        _count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        Err(io_error("a Cluster routes commands, not packed bytes"))
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.rt.is_some()
    }
}

#[derive(Clone)]
enum AsyncConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

type Replier = tokio::sync::oneshot::Sender<redis::RedisResult<Vec<i64>>>;

/// Merged calls on their way at once, per store.
const MERGED_IN_FLIGHT: usize = 2;

struct StoreInner {
    what: String,
    client: Client,
    /// This process's connections (see [`Conns`]).
    conns: ArcSwap<Conns>,
    pool_size: usize,
    /// Merged calls sent, by size: 1, 2-3, 4-7, ..., 32-63, 64.
    merged: [AtomicU64; 7],
    connect_timeout: Duration,
    command_timeout: Duration,
    /// For `rediss://`: the CA to verify the server with (else the system's).
    ca_pem: Option<Vec<u8>>,
    /// The blocking connections' rustls configuration, made at their first connect.
    tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// The breaker's clock: µs since this instant.
    base: Instant,
    breaker: Breaker,
    round_trips: AtomicU64,
}

/// The connections of one process, and the state of the calls on them.
///
/// A process forked after the store was built (gunicorn `--preload`,
/// `multiprocessing`'s fork) inherits its parent's: the same sockets, which
/// the parent and every other child also use (two processes writing to one
/// connection read each other's replies: a verdict for another client, or a
/// call that waits out its deadline into the fail mode), and the state of
/// tasks and threads that did not survive the fork (a merge in progress, a
/// connect under way: a child's async checks would queue forever). So each
/// process has its own: the first call in a child replaces the parent's
/// ([`RedisStore::conns`]) and connects its own in the background (on
/// Sentinel, through its own connections to the sentinels). The
/// parent's are left alone in the child, never dropped or used: they are
/// the parent's sockets, and their locks may be held by threads that are
/// not in the child.
struct Conns {
    /// The process these connections belong to.
    pid: u32,
    pool: Box<[Mutex<Option<SyncConn>>]>,
    /// Per slot: a connection is being made for it in the background.
    connecting: Box<[AtomicBool]>,
    next: AtomicUsize,
    async_conn: Mutex<Option<AsyncConn>>,
    /// The multiplexed connection is being made on a task of its own.
    async_connecting: AtomicBool,
    /// Woken when that task ends (connected or not).
    async_ready: tokio::sync::Notify,
    /// Checks waiting for a merged call, each with where its reply goes.
    queue: Mutex<Vec<(script::Merged, Replier)>>,
    /// A task is gathering merged calls.
    merging: AtomicBool,
    /// Merged calls on their way at once (two: the server decides one while
    /// the client reads the other's replies and gathers the next).
    sends: Arc<tokio::sync::Semaphore>,
    /// Made for a forked child, which has no connection yet: its first
    /// blocking call waits for one ([`RedisStore::first_in_child`]).
    forked: AtomicBool,
    /// On Sentinel, the client asking the sentinels which server is the
    /// master: redis-rs keeps a connection to each sentinel in it, which a
    /// forked child must not share either. (None: not on Sentinel, or its
    /// client could not be built again in this process.)
    sentinel: Option<Mutex<redis::sentinel::SentinelClient>>,
}

impl Conns {
    /// None yet, for process `pid`: `pool_size` empty slots.
    fn new(
        pid: u32,
        pool_size: usize,
        forked: bool,
        sentinel: Option<redis::sentinel::SentinelClient>,
    ) -> Self {
        Self {
            forked: AtomicBool::new(forked),
            sentinel: sentinel.map(Mutex::new),
            pid,
            pool: (0..pool_size).map(|_| Mutex::new(None)).collect(),
            connecting: (0..pool_size).map(|_| AtomicBool::new(false)).collect(),
            next: AtomicUsize::new(0),
            async_conn: Mutex::new(None),
            async_connecting: AtomicBool::new(false),
            async_ready: tokio::sync::Notify::new(),
            queue: Mutex::new(Vec::new()),
            merging: AtomicBool::new(false),
            sends: Arc::new(tokio::sync::Semaphore::new(MERGED_IN_FLIGHT)),
        }
    }
}

/// Connections to one Redis (standalone or Cluster), shared by any number of
/// [`RedisLimiter`](super::RedisLimiter)s (e.g. all the rules of a policy), with one circuit breaker.
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.what)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

/// The default connect timeout. Connections are made at build and on
/// background threads, never on a request's path, so this bounds only how long
/// a start-up (or a background reconnect) waits for a Redis that drops packets.
/// Measured on a 2-core machine with 6 busy-looping processes (load 3): a TCP
/// connect plus `PING` to loopback Redis took p50 0.12 ms, p99.9 5.5-7.8 ms,
/// p100 15-21 ms; a TLS handshake adds a few ms more. 1 s leaves room for both.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default per-call deadline (a whole check: waiting for a pooled
/// connection, writing, reading). Measured with `floodgate bench --store` on the
/// same loaded machine (benches/README.md, "Redis deadlines under load"): one
/// check at a time took p50 28-33 µs, p99 74-90 µs but p100 6-20 ms; 64 in
/// flight on one connection, p99 12-14 ms and p100 20 ms. The old 5 ms default
/// sent such checks to the fail mode; 50 ms keeps a loaded host out of it and
/// still bounds what a frozen Redis costs a request (three such calls open the
/// circuit breaker).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

/// Options for a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    /// With Sentinel: the monitored master's name (`urls` are the sentinels).
    master_name: Option<String>,
    /// With Sentinel: how to connect to the master.
    master: SentinelMaster,
    connect_timeout: Duration,
    command_timeout: Duration,
    pool_size: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    breaker_max_cooldown: Duration,
    check_on_build: bool,
    ca_pem: Option<Vec<u8>>,
}

impl RedisStoreBuilder {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            urls,
            cluster,
            master_name: None,
            master: SentinelMaster::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            pool_size: cores * 2,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(50),
            breaker_max_cooldown: Duration::from_millis(500),
            check_on_build: true,
            ca_pem: None,
        }
    }

    /// For `rediss://` URLs: trust the CA certificate(s) in `pem` (instead of
    /// the system's trust store) to verify the server's certificate.
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// With Sentinel: the user (None: the default user) and password the
    /// master and its replicas require. The sentinels give the master's
    /// address only; their own user and password go in their URLs.
    pub fn master_auth(mut self, user: Option<&str>, password: &str) -> Self {
        self.master.user = user.map(str::to_string);
        self.master.password = Some(password.to_string());
        self
    }

    /// With Sentinel: the master's database (default 0).
    pub fn master_db(mut self, db: i64) -> Self {
        self.master.db = db;
        self
    }

    /// With Sentinel: connect to the master over TLS, its certificate verified
    /// against [`ca_pem`](Self::ca_pem) or the system's trust store.
    pub fn master_tls(mut self, tls: bool) -> Self {
        self.master.tls = tls;
        self
    }

    /// Connect timeout (default [`DEFAULT_CONNECT_TIMEOUT`], 1 s): never on a
    /// request's path.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The deadline of a whole call (default [`DEFAULT_COMMAND_TIMEOUT`], 50 ms).
    pub fn command_timeout(mut self, t: Duration) -> Self {
        self.command_timeout = t;
        self
    }

    /// Blocking connections in the pool (default 2 per core; at most 256).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 3).
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.breaker_threshold = n;
        self
    }

    /// First cool-down of an open breaker (default 50 ms); it doubles after each
    /// failed probe up to [`breaker_max_cooldown`](Self::breaker_max_cooldown).
    /// This is also the reconnect backoff.
    pub fn breaker_cooldown(mut self, t: Duration) -> Self {
        self.breaker_cooldown = t;
        self
    }

    /// Longest cool-down (default 500 ms): once Redis is back, checks return to it
    /// within this time.
    pub fn breaker_max_cooldown(mut self, t: Duration) -> Self {
        self.breaker_max_cooldown = t;
        self
    }

    /// Whether `build` must reach Redis (default true): a wrong URL, password or
    /// port is then an error at startup instead of a fail-mode answer later.
    /// With `false`, `build` still tries to connect once (at most the connect
    /// timeout); if Redis cannot be reached, the store starts in the fail mode
    /// and connects in the background.
    pub fn check_on_build(mut self, yes: bool) -> Self {
        self.check_on_build = yes;
        self
    }

    /// Opens the store and (by default) checks that Redis answers and loads the script.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] for an invalid URL or, with `check_on_build`, a
    /// Redis that cannot be reached or refuses the credentials;
    /// [`Error::InvalidOption`] for zero timeouts or no URL.
    pub fn build(self) -> Result<RedisStore> {
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "timeout",
                problem: "must be longer than zero",
            });
        }
        if self.urls.is_empty() {
            return Err(Error::InvalidOption {
                option: "url",
                problem: "give at least one redis:// URL",
            });
        }
        // Passwords never reach error messages or Debug output.
        let what = self
            .urls
            .iter()
            .map(|u| redacted(u))
            .collect::<Vec<_>>()
            .join(",");
        let certs = || certificates(self.ca_pem.as_ref());
        let client = if let Some(master) = &self.master_name {
            Ok(Client::Sentinel(Box::new(SentinelSpec {
                urls: self.urls.clone(),
                master: master.clone(),
                node: self.master.clone(),
                ca_pem: self.ca_pem.clone(),
            })))
        } else if self.cluster {
            let mut b =
                redis::cluster::ClusterClient::builder(self.urls.iter().map(String::as_str))
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.command_timeout)
                    .retries(1)
                    .min_retry_wait(1)
                    .max_retry_wait(10);
            if self.ca_pem.is_some() {
                b = b.certs(certs());
            }
            b.build().map(|c| Client::Cluster(Box::new(c)))
        } else {
            let url = self.urls.first().map_or("", String::as_str);
            if self.ca_pem.is_some() {
                redis::Client::build_with_tls(url, certs()).map(Client::Single)
            } else {
                redis::Client::open(url).map(Client::Single)
            }
        }
        .map_err(|e| unavailable(&what, &e))?;
        // Built here (a sentinel URL that does not parse is refused now), and
        // again in each forked child.
        let sentinel = client.sentinel().map_err(|e| unavailable(&what, &e))?;
        let pool_size = self.pool_size.clamp(1, 256);
        let store = RedisStore {
            inner: Arc::new(StoreInner {
                what,
                client,
                conns: ArcSwap::from_pointee(Conns::new(
                    std::process::id(),
                    pool_size,
                    false,
                    sentinel,
                )),
                pool_size,
                merged: Default::default(),
                connect_timeout: self.connect_timeout,
                command_timeout: self.command_timeout,
                ca_pem: self.ca_pem.clone(),
                tls: std::sync::OnceLock::new(),
                base: Instant::now(),
                breaker: Breaker::new(
                    self.breaker_threshold,
                    Micros::floor(self.breaker_cooldown),
                    Micros::floor(self.breaker_max_cooldown),
                ),
                round_trips: AtomicU64::new(0),
            }),
        };
        // Not a request: the first connection is made here, and checked.
        let conns = store.conns();
        match store.open(&conns) {
            Ok(conn) => {
                if let Some(slot) = conns.pool.first() {
                    *slot.lock() = Some(conn);
                }
            }
            Err(e) if self.check_on_build => return Err(unavailable(&store.inner.what, &e)),
            // Started in the fail mode: connected in the background.
            Err(_) => store.connect_in_background(&conns, 0),
        }
        // The rest of the pool is connected in the background as calls meet
        // its empty slots.
        Ok(store)
    }
}

/// `url` without its password (`rediss://user:***@host:port/`).
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = url.get(scheme + 3..at).unwrap_or_default();
            let user = creds.split(':').next().unwrap_or_default();
            let scheme_part = url.get(..scheme + 3).unwrap_or_default();
            let rest = url.get(at..).unwrap_or_default();
            if creds.contains(':') {
                format!("{scheme_part}{user}:***{rest}")
            } else {
                format!("{scheme_part}***{rest}")
            }
        }
        _ => url.to_string(),
    }
}

/// The time left until `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> redis::RedisResult<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| timed_out("the call's deadline passed"))
}

fn timed_out(message: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

/// How early the tokio timer of [`within`] fires: tokio counts whole
/// milliseconds and wakes up to ~2 ms after a deadline (rounded up to its next
/// 1 ms tick, then its driver's `epoll_wait` in whole ms; measured +1.4-1.7 ms
/// on a 20 ms timeout).
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// `f`'s output, or `None` once `deadline` has passed: a deadline kept to the
/// scheduler's wake-up. tokio's timer is set [`TIMER_SLACK`] early, and the
/// last stretch polls `f` between yields: a spin of at most that long, only
/// in a call that reaches its deadline (three of those in a row open the
/// breaker, whose calls do not wait).
async fn within<F: std::future::Future>(deadline: Instant, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    // (A deadline already past fires at once.)
    let early = deadline.checked_sub(TIMER_SLACK).unwrap_or(deadline);
    if let Ok(out) = tokio::time::timeout_at(early.into(), f.as_mut()).await {
        return Some(out);
    }
    let mut spin = std::pin::pin!(async {
        while Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    });
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => spin.as_mut().poll(cx).map(|()| None),
    })
    .await
}

/// `f`'s result, or a timeout error saying `late` once `deadline` has passed
/// (see [`within`]).
async fn bounded<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
    late: &'static str,
) -> redis::RedisResult<T> {
    within(deadline, f)
        .await
        .unwrap_or_else(|| Err(timed_out(late)))
}

/// Whether an error means the connection can no longer be trusted.
fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl RedisStore {
    /// A store on the standalone Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![url.to_string()], false)
    }

    /// A store on a Redis Cluster, given one or more of its nodes' URLs.
    pub fn cluster_builder<S: AsRef<str>>(nodes: &[S]) -> RedisStoreBuilder {
        RedisStoreBuilder::new(nodes.iter().map(|s| s.as_ref().to_string()).collect(), true)
    }

    /// A store on the master that Redis Sentinel names `master_name`, given
    /// the sentinels' URLs (`redis://host:26379`). Connections are made to the
    /// master the sentinels report at the time; after a failover, broken
    /// connections are made again (off the request path) to the new master.
    pub fn sentinel_builder<S: AsRef<str>>(
        sentinels: &[S],
        master_name: &str,
    ) -> RedisStoreBuilder {
        let mut b = RedisStoreBuilder::new(
            sentinels.iter().map(|s| s.as_ref().to_string()).collect(),
            false,
        );
        b.master_name = Some(master_name.to_string());
        b
    }

    /// A limiter using these connections.
    pub fn limiter(&self) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Shared(self.clone()))
    }

    /// Round trips made to Redis (successful or not).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// Times the circuit breaker opened.
    pub fn breaker_trips(&self) -> u64 {
        self.inner.breaker.trips()
    }

    /// Whether the circuit breaker is open (or half-open) now.
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The store's description (its URLs), for error messages.
    pub(super) fn what(&self) -> &str {
        &self.inner.what
    }

    /// This process's connections: in a process forked since they were made,
    /// new ones (none connected yet), the parent's left alone (see [`Conns`]).
    /// A `getpid` per call: ~0.1 µs of a round trip's tens. A guard, not an
    /// `Arc`: a blocking call takes no reference count that every thread's
    /// calls would share (`Guard::into_inner` for a task to own).
    fn conns(&self) -> arc_swap::Guard<Arc<Conns>> {
        let pid = std::process::id();
        let current = self.inner.conns.load();
        if current.pid == pid {
            return current;
        }
        let parents = arc_swap::Guard::into_inner(current);
        // A failure to build the sentinel client again (its URLs parsed in the
        // parent) leaves this child's connects failing: the fail mode.
        let sentinel = self.inner.client.sentinel().ok().flatten();
        let fresh = Arc::new(Conns::new(pid, self.inner.pool_size, true, sentinel));
        let before = self.inner.conns.compare_and_swap(&parents, fresh);
        if Arc::ptr_eq(&before, &parents) {
            // Never dropped here: they are the parent's (see `Conns`).
            std::mem::forget(parents);
        }
        self.inner.conns.load()
    }

    /// The breaker's time now (µs since the store was built; above 0).
    fn breaker_now(&self) -> Micros {
        Micros::floor(self.inner.base.elapsed()).saturating_add(Micros(1))
    }

    /// Whether a call may go to Redis now (false while the breaker is open).
    pub(super) fn breaker_allows(&self) -> bool {
        self.inner.breaker.allow(self.breaker_now())
    }

    /// Tells the breaker how a round trip went.
    pub(super) fn record<T, E>(&self, result: &std::result::Result<T, E>) {
        match result {
            Ok(_) => self.inner.breaker.success(),
            Err(_) => self.inner.breaker.failure(self.breaker_now()),
        }
    }

    /// A new connection, checked (`PING`) and with the script loaded, so that a
    /// call never pays a `NOSCRIPT` round trip after a reconnect. Never on a
    /// request's path: at build, or in the background.
    fn open(&self, conns: &Conns) -> redis::RedisResult<SyncConn> {
        let i = &self.inner;
        // Each call sets its own deadline; the set-up below (connect, AUTH,
        // SELECT, PING, SCRIPT LOAD) has the connect timeout and two command
        // timeouts.
        let single = |c: &redis::Client| -> redis::RedisResult<SyncConn> {
            let start = Instant::now();
            let tls = || -> redis::RedisResult<_> {
                if let Some(config) = i.tls.get() {
                    return Ok(config.clone());
                }
                let config = blocking::tls_config(i.ca_pem.as_deref())?;
                Ok(i.tls.get_or_init(|| config).clone())
            };
            if let Some(conn) = blocking::Conn::connect(
                c.get_connection_info(),
                tls,
                start + i.connect_timeout,
                start + i.connect_timeout + i.command_timeout * 2,
            )? {
                return Ok(SyncConn::Timed(conn));
            }
            let conn = c.get_connection_with_timeout(i.connect_timeout)?;
            conn.set_read_timeout(Some(i.command_timeout * 2))?;
            conn.set_write_timeout(Some(i.command_timeout * 2))?;
            Ok(SyncConn::Single(conn))
        };
        let mut conn = match &i.client {
            Client::Single(c) => single(c)?,
            Client::Cluster(c) => SyncConn::Cluster(Box::new(ClusterConn::connect(
                c,
                Instant::now() + i.connect_timeout + i.command_timeout * 2,
            )?)),
            Client::Sentinel(_) => single(&Self::master(conns)?)?,
        };
        redis::cmd("PING").query::<String>(conn.as_dyn())?;
        redis::Script::new(script::SOURCE)
            .prepare_invoke()
            .load(conn.as_dyn())?;
        Ok(conn)
    }

    /// Connects pool slot `n` on a thread of its own, unless it is connected or
    /// being connected: a request never waits for a TCP connect (a frozen or
    /// unreachable Redis can hold one for far longer than its timeout) beyond
    /// its own deadline, and only a forked child's first calls wait at all
    /// ([`first_in_child`](Self::first_in_child)).
    fn connect_in_background(&self, conns: &Arc<Conns>, n: usize) {
        let Some(flag) = conns.connecting.get(n) else {
            return;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return;
        }
        let (store, conns) = (self.clone(), Arc::clone(conns));
        let spawned = std::thread::Builder::new()
            .name("floodgate-redis-connect".into())
            .spawn(move || {
                let connected = conns.pool.get(n).is_some_and(|slot| slot.lock().is_some());
                if !connected
                    && let Ok(conn) = store.open(&conns)
                    && let Some(slot) = conns.pool.get(n)
                {
                    let mut slot = slot.lock();
                    if slot.is_none() {
                        *slot = Some(conn);
                    }
                }
                if let Some(flag) = conns.connecting.get(n) {
                    flag.store(false, Ordering::Release);
                }
            });
        if spawned.is_err() {
            flag.store(false, Ordering::Release);
        }
    }

    /// A pooled connection within the deadline: a free connected slot, else the
    /// next slot as soon as it is free and connected; an error once the
    /// deadline passes (more callers than connections, or none connected yet).
    /// Empty slots met on the way are connected in the background.
    fn slot<'c>(
        &self,
        conns: &'c Arc<Conns>,
        deadline: Instant,
    ) -> redis::RedisResult<(usize, MutexGuard<'c, Option<SyncConn>>)> {
        let pool = &conns.pool;
        let n = conns.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        let mut wait_on = n;
        for k in 0..pool.len() {
            let m = (n + k) % pool.len();
            let Some(slot) = pool.get(m) else {
                continue;
            };
            match slot.try_lock() {
                Some(guard) if guard.is_some() => return Ok((m, guard)),
                Some(_) => self.connect_in_background(conns, m),
                None => wait_on = m, // busy, so connected: worth waiting for
            }
        }
        let guard = pool
            .get(wait_on)
            .and_then(|slot| slot.try_lock_until(deadline))
            .ok_or_else(|| timed_out("every pooled connection stayed busy until the deadline"))?;
        if guard.is_none() {
            self.connect_in_background(conns, wait_on);
            drop(guard);
            if conns.forked.load(Ordering::Acquire) {
                return Self::first_in_child(conns, deadline);
            }
            return Err(timed_out("no connection yet: connecting in the background"));
        }
        Ok((wait_on, guard))
    }

    /// In a process forked since the store was built, which has no connection
    /// of its own yet (see [`Conns`]): the first connection the background is
    /// making, waited for within the call's deadline (a loopback connect takes
    /// ~0.1 ms), rather than the fail mode for every worker's first requests.
    /// Once one is made, or a wait ends without one, calls no longer wait.
    fn first_in_child(
        conns: &Arc<Conns>,
        deadline: Instant,
    ) -> redis::RedisResult<(usize, MutexGuard<'_, Option<SyncConn>>)> {
        loop {
            for (m, slot) in conns.pool.iter().enumerate() {
                if let Some(guard) = slot.try_lock()
                    && guard.is_some()
                {
                    conns.forked.store(false, Ordering::Release);
                    return Ok((m, guard));
                }
            }
            let trying = conns.connecting.iter().any(|c| c.load(Ordering::Acquire));
            if !trying || Instant::now() >= deadline {
                conns.forked.store(false, Ordering::Release);
                return Err(timed_out("no connection yet: connecting in the background"));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Runs `f` on a pooled blocking connection within the command timeout, a
    /// **deadline** for the whole call (waiting for a pooled connection,
    /// writing and reading; a call never connects). A connection that failed
    /// is dropped (a timed-out one may still deliver a late reply) and made
    /// again in the background.
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut SyncConn) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let deadline = Instant::now() + self.inner.command_timeout;
        let conns = self.conns();
        let (n, mut slot) = self.slot(&conns, deadline)?;
        let conn = slot.as_mut().ok_or_else(|| io_error("no connection"))?;
        match conn {
            SyncConn::Timed(c) => c.set_deadline(deadline),
            SyncConn::Single(c) => {
                // What is left of the deadline bounds every read and write of
                // this call, in the kernel's ticks (rounded up).
                let left = left(deadline)?;
                c.set_read_timeout(Some(left))?;
                c.set_write_timeout(Some(left))?;
            }
            SyncConn::Cluster(c) => c.deadline = deadline,
        }
        let result = f(conn);
        // A Cluster connection mends itself: a frozen node's timeouts must
        // not cost the other nodes' keys their connection. Another is made
        // again after an I/O error or a timeout, or once it reports itself
        // closed (a reply that did not parse leaves it out of step).
        let broken = match conn {
            SyncConn::Cluster(_) => false,
            other => result.as_ref().err().is_some_and(is_broken) || !other.as_dyn().is_open(),
        };
        if broken {
            // Made again off the request path.
            *slot = None;
            drop(slot);
            self.connect_in_background(&conns, n);
        }
        result
    }

    /// The multiplexed connection. It is made on a task of its own (never
    /// inside a call's deadline, which would cancel it half made and start
    /// again at the next call); a call waits for it within its deadline.
    async fn async_conn(&self, i: &Arc<Conns>) -> redis::RedisResult<AsyncConn> {
        // Created before the check, so the task's wake-up cannot be missed.
        let ready = i.async_ready.notified();
        if let Some(c) = i.async_conn.lock().clone() {
            return Ok(c);
        }
        if !i.async_connecting.swap(true, Ordering::AcqRel) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                i.async_connecting.store(false, Ordering::Release);
                return Err(io_error("check_async needs a tokio runtime"));
            };
            let (store, conns) = (self.clone(), Arc::clone(i));
            runtime.spawn(async move {
                if let Ok(conn) = store.connect_async(&conns).await {
                    *conns.async_conn.lock() = Some(conn);
                }
                conns.async_connecting.store(false, Ordering::Release);
                conns.async_ready.notify_waiters();
            });
        }
        ready.await;
        i.async_conn
            .lock()
            .clone()
            .ok_or_else(|| io_error("could not connect to Redis (tried again at the next call)"))
    }

    async fn connect_async(&self, conns: &Arc<Conns>) -> redis::RedisResult<AsyncConn> {
        let i = &self.inner;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(i.connect_timeout))
            .set_response_timeout(Some(i.command_timeout));
        Ok(match &i.client {
            Client::Single(c) => AsyncConn::Single(
                c.get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Client::Cluster(c) => AsyncConn::Cluster(c.get_async_connection().await?),
            Client::Sentinel(_) => {
                // Asking the sentinels is a blocking call: off the runtime's workers.
                let conns = Arc::clone(conns);
                let master = tokio::task::spawn_blocking(move || Self::master(&conns))
                    .await
                    .map_err(|_| io_error("the sentinel lookup did not complete"))??;
                AsyncConn::Single(
                    master
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        })
    }

    /// A client for the master the sentinels name now, asked through this
    /// process's sentinel client.
    fn master(conns: &Conns) -> redis::RedisResult<redis::Client> {
        conns
            .sentinel
            .as_ref()
            .ok_or_else(|| io_error("no sentinel client in this process"))?
            .lock()
            .get_client()
    }

    /// Whether async checks on the server's clock are merged into one call
    /// (standalone Redis and Sentinel; a Cluster's checks go to many nodes).
    pub(super) fn merges(&self) -> bool {
        !matches!(self.inner.client, Client::Cluster(_))
    }

    /// Merged calls sent so far, by number of checks carried: `[1, 2-3, 4-7,
    /// 8-15, 16-31, 32-63, 64]`.
    pub fn merged_calls(&self) -> [u64; 7] {
        self.inner
            .merged
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed))
    }

    /// One check, sent with the other tasks' checks that are waiting: **merged
    /// calls**. While one call is on its way, checks queue; when it returns, the
    /// next call carries all of them (up to [`script::MERGE_MAX`]), decided in
    /// order on the server, each all-or-nothing. Uncontended, a check goes at
    /// once, alone; under load, one round trip serves many. The command
    /// timeout is this check's deadline, queueing included.
    pub(super) async fn run_merged(&self, check: script::Merged) -> redis::RedisResult<Vec<i64>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let conns = arc_swap::Guard::into_inner(self.conns());
        conns.queue.lock().push((check, tx));
        if !conns.merging.swap(true, Ordering::AcqRel) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                conns.merging.store(false, Ordering::Release);
                return Err(io_error("check_async needs a tokio runtime"));
            };
            // A task of its own: a caller that gives up cannot strand the queue.
            let store = self.clone();
            runtime.spawn(async move { store.send_merged(&conns).await });
        }
        match within(Instant::now() + self.inner.command_timeout, rx).await {
            Some(Ok(reply)) => reply,
            Some(Err(_)) => Err(io_error("the merged call was dropped")),
            None => Err(timed_out("the call's deadline passed")),
        }
    }

    /// Gathers the queue into merged calls until it is empty, with at most
    /// [`MERGED_IN_FLIGHT`] calls on their way: while they are, checks queue
    /// and the next call carries them all.
    async fn send_merged(&self, conns: &Arc<Conns>) {
        loop {
            let Ok(permit) = Arc::clone(&conns.sends).acquire_owned().await else {
                return; // never closed
            };
            if conns.queue.lock().len() < script::MERGE_MAX {
                // The tasks the last reply woke are about to queue their next
                // checks: let them run first, so that this call carries them
                // rather than leaving with one check (at 64 in flight, calls
                // of one check fell from a third to 1%, and the rate rose by
                // 25-35%). Alone, a check waits one yield.
                tokio::task::yield_now().await;
            }
            let batch: Vec<(script::Merged, Replier)> = {
                let mut queue = conns.queue.lock();
                let n = queue.len().min(script::MERGE_MAX);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(permit);
                conns.merging.store(false, Ordering::Release);
                // A check queued between the drain and the store above found the
                // flag set and left: take it on, unless another task did.
                if conns.queue.lock().is_empty() || conns.merging.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let store = self.clone();
            tokio::spawn(async move {
                store.send_batch(batch).await;
                drop(permit);
            });
        }
    }

    /// One merged call: each check's reply (or the call's error) to its caller.
    async fn send_batch(&self, batch: Vec<(script::Merged, Replier)>) {
        let size = batch.len();
        let bucket = (usize::BITS - size.leading_zeros()).saturating_sub(1) as usize;
        if let Some(c) = self.inner.merged.get(bucket.min(6)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let invocation = script::merged(script::limiter(), batch.iter().map(|(c, _)| c));
        let replies = self
            .run_async(&invocation)
            .await
            .map(|values| script::split_merged(&values, batch.iter().map(|(c, _)| c)));
        match replies {
            Ok(Some(replies)) => {
                for ((_, tx), r) in batch.into_iter().zip(replies) {
                    let _ = tx.send(Ok(r));
                }
            }
            Ok(None) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "unexpected merged reply",
                    ))));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(redis::RedisError::from((
                        e.kind(),
                        "the merged call failed",
                    ))));
                }
            }
        }
    }

    /// Deletes `keys` (one slot's worth) in one round trip.
    pub(super) fn del(&self, keys: &[Vec<u8>]) -> redis::RedisResult<()> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        self.with_conn(|conn| {
            redis::cmd("DEL")
                .arg(keys)
                .query::<u64>(conn.as_dyn())
                .map(|_| ())
        })
    }

    pub(super) fn run_sync(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<Vec<i64>> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        self.with_conn(|conn| invocation.invoke::<Vec<i64>>(conn.as_dyn()))
    }

    /// One script call within the command timeout, a **deadline** for the
    /// whole call (waiting for the connection, sending, the reply).
    pub(super) async fn run_async(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<Vec<i64>> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        let conns = arc_swap::Guard::into_inner(self.conns());
        let call = async {
            match self.async_conn(&conns).await? {
                AsyncConn::Single(mut c) => invocation.invoke_async(&mut c).await,
                AsyncConn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
            }
        };
        let result = bounded(
            Instant::now() + self.inner.command_timeout,
            call,
            "the call's deadline passed",
        )
        .await;
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
            && !e.is_timeout()
        {
            // The multiplexed connection is gone: made again at the next call.
            // (A timeout alone leaves it usable: replies are matched in order.)
            *conns.async_conn.lock() = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("rediss://app:s3cret@db.example:6380/0"),
            "rediss://app:***@db.example:6380/0"
        );
        assert_eq!(
            redacted("redis://:s3cret@127.0.0.1/"),
            "redis://:***@127.0.0.1/"
        );
        assert_eq!(redacted("redis://token@h/"), "redis://***@h/");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }
}
