//! [`RedisBackend`]: the tier itself.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::{Client, WithOptions};
use fred::error::{Error as FredError, ErrorKind as FredKind};
use fred::interfaces::{ClientLike, ClusterInterface, KeysInterface};
use fred::types::config::{Options, ReconnectPolicy, Server, ServerConfig};
use fred::types::{Expiration, Key, Value};
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, GetFuture, Op, Result,
    TierFuture, Timestamp, WriteFuture, envelope,
};
use tracing::Instrument;

use crate::cluster::{self, ClusterRouter};
use crate::config::{RedisBackendBuilder, RedisSource};
use crate::error::{RedisError, map_error};
use crate::keys::Namespace;
use crate::replication::{Confirmation, Write};
use crate::script;
use crate::sentinel::SentinelWatch;
use crate::stats::{Counters, RedisStats, WRONG_TYPE};

/// The latest expiry written with `PXAT`: 9999-12-31T23:59:59.999Z. A value expiring later is
/// stored without expiry (and still never returned after its `expires_at`).
const MAX_PXAT_MILLIS: u64 = 253_402_300_799_999;

/// A tier over Redis (standalone, cluster or sentinel), through [fred].
///
/// # Contents
///
/// * [Building](#building): from a URL, a fred `Config`, or a fred `Client`/`Pool` you own
/// * [Key layout and hash tags](#key-layout-and-hash-tags)
/// * [Expiry](#expiry)
/// * [Corrupt and foreign values](#corrupt-and-foreign-values)
/// * [Timeouts and reconnection](#timeouts-and-reconnection)
/// * [Sentinel failovers](#sentinel-failovers)
/// * [`clear`](#clear)
///
/// Clones share the connections and the counters. The tier is remote: every operation returns
/// a pending [`TierFuture`] (one allocation, next to a network round trip), and
/// [`probe`](Backend::probe) keeps its default, [`Probe::Unknown`](tierkit_core::Probe).
///
/// # Building
///
/// From a URL ([the grammar](crate#connecting)), with every other setting at its default:
///
/// ```no_run
/// use tierkit_redis::RedisBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_redis::RedisError> {
/// let standalone = RedisBackend::from_url("redis://:password@10.0.0.5:6379/0").await?;
/// let cluster =
///     RedisBackend::from_url("redis-cluster://10.0.0.5:7000?node=10.0.0.6:7000&node=10.0.0.7:7000")
///         .await?;
/// assert!(cluster.is_clustered() && !standalone.is_clustered());
/// # Ok(()) }
/// ```
///
/// With a builder ([`RedisBackendBuilder`] lists every setting and its default):
///
/// ```no_run
/// use std::time::Duration;
/// use tierkit_redis::RedisBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_redis::RedisError> {
/// let l2 = RedisBackend::builder("redis-sentinel://10.0.0.5:26379?sentinelServiceName=cache")
///     .namespace("shop")
///     .command_timeout(Duration::from_millis(200))
///     .connect_timeout(Duration::from_secs(2))
///     .build()
///     .await?;
/// assert_eq!(l2.namespace(), "shop");
/// # Ok(()) }
/// ```
///
/// From a fred [`Config`](fred::types::config::Config), for settings a URL cannot express (the
/// tier still applies its timeouts, its reconnect policy and `fail_fast`):
///
/// ```no_run
/// use tierkit_redis::RedisBackend;
/// use tierkit_redis::fred::types::config::{Config, ServerConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_redis::RedisError> {
/// let config = Config {
///     server: ServerConfig::new_centralized("10.0.0.5", 6379),
///     username: Some("cache".into()),
///     password: Some("secret".into()),
///     ..Config::default()
/// };
/// let l2 = RedisBackend::builder(config).namespace("shop").build().await?;
/// # drop(l2);
/// # Ok(()) }
/// ```
///
/// From a fred [`Client`] (or [`Pool`](fred::clients::Pool)) the application already runs: the
/// tier uses it as it is, never connects nor closes it, and waits up to the connect timeout
/// for it to be connected:
///
/// ```no_run
/// use tierkit_redis::RedisBackend;
/// use tierkit_redis::fred::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Builder::from_config(Config::from_url("redis://10.0.0.5:6379")?).build()?;
/// client.init().await?;
/// let l2 = RedisBackend::builder(client.clone()).namespace("shop").build().await?;
/// // ... the application keeps using `client` for its own commands ...
/// # drop(l2);
/// client.quit().await?; // the application closes it, after the tier's last use
/// # Ok(()) }
/// ```
///
/// # Key layout and hash tags
///
/// The Redis key of a [`CacheKey`] is the namespace, a colon, then the key's canonical bytes,
/// unchanged: `shop:user:42`. Any key works, control characters, NUL and Unicode included
/// ([`redis_key`](Self::redis_key) shows the exact bytes). In the namespace, `%` is written
/// `%25` and `:` is written `%3A`, so the first colon always ends the namespace and no two
/// (namespace, key) pairs share a Redis key: namespace `shop` with key `eu:cart:7` is
/// `shop:eu:cart:7`, namespace `shop:eu` with key `cart:7` is `shop%3Aeu:cart:7`.
///
/// In a cluster, Redis places each key in a hash slot computed from the whole key, unless the
/// key contains a *hash tag*: then only the text between the first `{` and the next `}` counts.
/// The namespace cannot contain braces, so a hash tag is always in your key: give keys that
/// belong together the same tag and they share a slot (and a node):
///
/// ```
/// use tierkit_core::CacheKey;
///
/// // Both live in the slot of "user42": only the tag is hashed.
/// let profile = CacheKey::new("{user42}:profile")?;
/// let settings = CacheKey::new("{user42}:settings")?;
/// # let slot = |key: &CacheKey| tierkit_redis::fred::util::redis_keyslot(key.as_bytes());
/// assert_eq!(slot(&profile), slot(&settings));
/// # Ok::<(), tierkit_core::BackendError>(())
/// ```
///
/// Tags concentrate load: a tag shared by very many keys makes one node hot.
///
/// # Expiry
///
/// `set` stores the value's [envelope](tierkit_core::envelope) (its three timestamps, a
/// checksum, the payload) with `SET key bytes PXAT expires_at`, so Redis removes the key when
/// the value expires; a value expiring after the year 9999 is stored without expiry. A value
/// that has already expired by the tier's [`Clock`] is not stored: the key is removed instead
/// (`UNLINK`), so an older value cannot outlive the newer write.
///
/// [`set_if_newer`](Backend::set_if_newer), the write of refills, is one Lua script
/// (`EVALSHA`, and `EVAL` once on a server that does not have it cached): it reads the stored
/// envelope's header, and writes as `set` does unless that envelope is live and was created
/// later. Redis runs it atomically, on the key's primary in a cluster. Its cost is in
/// `docs/redis.md`.
///
/// `get` also checks `expires_at` against the tier's clock and answers a miss for an expired
/// value (counted in [`RedisStats::expired_reads`]), so a value is never returned after its
/// `expires_at`, whichever of the two clocks runs ahead. Redis expires by its own clock: if the
/// tier's clock runs *behind* Redis', values disappear early by the difference (a
/// [`ManualClock`](tierkit_core::ManualClock) set in the past makes every write expire at
/// once).
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
/// use tierkit_redis::RedisBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let Ok(url) = std::env::var("TIERKIT_REDIS_URL") else { return Ok(()) }; // needs a server
/// let tier = RedisBackend::builder(url.as_str()).namespace("doc-expiry").build().await?;
/// let key = CacheKey::new("session:9")?;
/// let now = Clock::System.now();
///
/// // Fresh for 30 s, then stale (still served, the caller decides) for 5 minutes.
/// let value = CacheValue::with_ttl(&b"token"[..], now, Duration::from_secs(30))
///     .with_stale_for(Duration::from_secs(300));
/// tier.set(&key, value.clone()).await?; // SET doc-expiry:session:9 <envelope> PXAT <now + 330 s>
/// assert_eq!(tier.get(&key).await?, Some(value));
///
/// // Writing an expired value removes the key.
/// let expired = CacheValue::with_ttl(&b"old"[..], now, Duration::ZERO);
/// tier.set(&key, expired).await?;
/// assert_eq!(tier.get(&key).await?, None);
/// # Ok(()) }
/// ```
///
/// # Corrupt and foreign values
///
/// Bytes under the namespace that are not a whole, unaltered envelope written for the key read
/// (written by another program, truncated, bit-flipped, copied from another key: every
/// envelope echoes its key, reason `key_mismatch`) and keys holding another Redis type (a list, a hash) are
/// answered as a **miss**, never as an error and never as another value. Each is counted by
/// reason in [`stats`](Self::stats) (`decode_errors`) and in the `metrics` counter
/// `tierkit_redis_decode_errors_total{reason}`, and traced at `debug` level with the key's
/// length and the reason (never the payload). A composition then refills the key from its other
/// tier; the next `set` overwrites the bad bytes.
///
/// ```
/// use tierkit_core::{Backend, CacheKey};
/// use tierkit_redis::RedisBackend;
/// use tierkit_redis::fred::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let Ok(url) = std::env::var("TIERKIT_REDIS_URL") else { return Ok(()) }; // needs a server
/// let tier = RedisBackend::builder(url.as_str()).namespace("doc-corrupt").build().await?;
/// let key = CacheKey::new("config")?;
///
/// // Another program writes plain text under the tier's key.
/// let raw = tier.clients()[0].clone();
/// let text = "plain text written by another program: not an envelope";
/// let _: () = raw.set(tier.redis_key(&key), text, None, None, false).await?;
///
/// assert_eq!(tier.get(&key).await?, None); // a miss, not an error
/// assert_eq!(tier.stats().decode_errors.get("bad_magic"), 1);
/// # tier.delete(&key).await?;
/// # Ok(()) }
/// ```
///
/// # Timeouts and reconnection
///
/// Every round trip is bounded by the [command timeout](RedisBackendBuilder::command_timeout)
/// (1 s by default): past it, the operation fails with
/// [`BackendError::Timeout`](tierkit_core::BackendError::Timeout), which is transient. While a
/// connection is down, fred reconnects in the background
/// ([`default_reconnect_policy`](Self::default_reconnect_policy): exponential, capped at 2 s,
/// forever) and operations fail at once with a transient
/// [`ErrorKind::Connection`](tierkit_core::ErrorKind::Connection) error, instead of queueing
/// until the server returns: a cache would rather miss than wait. A connection on which Redis
/// answers nothing for twice the command timeout (a hung server, or a half-open connection
/// after a failover) is closed and reopened, whether or not commands keep coming (for the
/// tier's own connections; an application's `Client` or `Pool` keeps its own settings).
///
/// # Sentinel failovers
///
/// From a sentinel URL (or a `Config`, `Client` or `Pool` connected through sentinels), fred
/// asks the sentinels for the primary, and checks with `ROLE` that it is one, each time a
/// connection is made. Redis replicates asynchronously, and when the sentinels promote the
/// replica while the old primary still runs (`SENTINEL FAILOVER`, a partition), the old
/// primary keeps answering until the sentinels demote it, 10 to 20 seconds later; it then drops
/// every write it took meanwhile for a copy of the new primary. Two mechanisms keep the tier
/// correct through that:
///
/// * **Writes are confirmed by a replica** ([`replica_acks`](RedisBackendBuilder::replica_acks),
///   1 by default through sentinels): `SET` (or `UNLINK`) and `WAIT 1 <half the command
///   timeout>` go in one round trip, and the write is acknowledged only when the replica has
///   it. A promoted replica stops confirming at once, so no write the old primary takes after
///   the promotion is acknowledged: it fails with a transient `Connection` error
///   (`NOREPLICAS`, as Redis' own `min-replicas-to-write`).
/// * **The tier moves when the failover is announced** (tiers built from a URL or a `Config`):
///   it subscribes to `+switch-master` on every sentinel it was given, and when one announces a
///   new primary for its service, it reconnects its clients, which ask the sentinels again
///   (again every 100 ms, within the connect timeout, while a sentinel that has not heard of
///   the failover names the old primary). Reads are then served by the new primary within two
///   seconds of the failover's start (measured: 1.3 to 1.6 s), instead of by the old one, with
///   what it held at the promotion, until its demotion. An application's `Client` or `Pool`
///   moves when fred reconnects it (at the latest when the old primary, demoted, closes its
///   connections).
///
/// Writes succeed again once the new primary has `replica_acks` replicas: with one replica,
/// when the old primary, demoted, has copied the new one (10 to 20 seconds after the
/// promotion); with more, as soon as the sentinels have reconfigured the other replicas, during
/// the failover. Measured with a primary, one replica, one sentinel and a write loop through
/// `SENTINEL FAILOVER`: without confirmation, 162,533 of 241,640 acknowledged writes were lost;
/// with both mechanisms, 0 of 32,402, and 52 writes failed, each after half the command
/// timeout, until the old primary had become the new one's replica. When the primary dies
/// instead, nothing answers after its death, and confirmation keeps the tier from
/// acknowledging its last writes that the replica had not received.
///
/// The cost of confirmation is one primary-to-replica round trip per write, during which the
/// commands pipelined behind it on the same connection wait; while fewer than `replica_acks`
/// replicas are connected, every write fails after half the command timeout (reads are not
/// affected). `replica_acks(0)` turns confirmation off: writes are then acknowledged by
/// whichever primary the tier is connected to, and those the old primary takes between the
/// promotion and the move (about a second) are lost. The subscriptions cost one idle
/// connection per sentinel.
///
/// # Cluster node failures
///
/// From a cluster URL or `Config`, the tier does not use a fred cluster client (fred 10
/// reconnects one as a whole when any primary dies, failing every slot until the failover).
/// It opens one fred client per primary and routes each command by its key's hash slot
/// (`CRC16` with hash tags, as Redis): at `build` it reads `CLUSTER SLOTS` from the first seed
/// that answers and connects every primary (an unreachable primary fails the build, naming
/// it). So when a primary dies:
///
/// * keys in its slots fail at once with a transient `Connection` error (a call or two may time
///   out first), while its client reconnects in the background
///   ([`RedisBackend::default_cluster_reconnect_policy`]: capped at 300 ms);
/// * keys in the other primaries' slots keep working: their clients are not affected. With
///   Redis' default `cluster-require-full-coverage yes`, Redis itself refuses every key
///   (`CLUSTERDOWN`, a transient `Connection` error) while the dead primary is flagged `FAIL`
///   and not replaced (about half a second with a replica, until it returns without one);
///   `cluster-require-full-coverage no` keeps the other slots served meanwhile.
///
/// Any transient error on a primary (a dropped connection, a timeout, `MOVED`, `ASK`,
/// `CLUSTERDOWN`) schedules a refresh of the routing table in the background: at most one at a
/// time and one every 250 ms, bounded by the connect timeout, reading `CLUSTER SLOTS` from any
/// reachable node (the seeds as a last resort). It connects new primaries (a promoted replica)
/// and closes the clients of nodes that no longer own slots. With a replica, the dead
/// primary's slots work again right after the promotion (measured: about 4 s after the kill
/// with a 2 s node timeout, 0 to 250 ms after the promotion). A `MOVED` reply is followed once,
/// to the node it names when that is a known primary, within the same command timeout; `ASK`
/// (a slot being migrated: the tier does not send `ASKING`) is reported as a transient
/// `Connection` error. In a composition, the in-process tier keeps serving its keys throughout.
///
/// A fred cluster `Client` or `Pool` the application passes in is used as it is, with fred's
/// own cluster routing and its whole-client reconnection.
///
/// Errors keep fred's error as their [`source`](std::error::Error::source). Their kinds:
/// I/O, a dropped connection, cluster redirections and `CLUSTERDOWN`, `LOADING`, `BUSY`,
/// backpressure are transient `Connection`; timeouts are `Timeout`; rejected credentials and
/// missing ACL permissions are permanent `PermissionDenied`; configuration errors are permanent
/// `Unsupported`; anything else is permanent `Internal`.
///
/// # `clear`
///
/// `clear` removes every key of its namespace and nothing else (no key of a namespace nested
/// under it, `shop:eu`, nor of one whose name extends it, `shop-2`): it walks the keyspace with
/// `SCAN MATCH <escaped namespace>:* COUNT 500` (the namespace's glob characters escaped too) on every primary (every node of a cluster, concurrently)
/// and removes each page's keys with `UNLINK` (grouped by hash slot in a cluster, so no
/// `CROSSSLOT` error). It never uses `KEYS` or `FLUSHDB`. Each round trip is bounded by the
/// command timeout; the whole operation takes as long as the keyspace needs. Keys written while
/// `clear` runs may or may not survive it; if the cluster's topology changes during `clear`, it
/// fails with a transient error and can be run again.
///
/// [fred]: https://docs.rs/fred
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

/// What `build` hands over.
pub(crate) struct Parts {
    pub(crate) connections: Connections,
    pub(crate) watch: Option<SentinelWatch>,
    pub(crate) owned: bool,
    pub(crate) servers: String,
    pub(crate) namespace: Namespace,
    pub(crate) label: Arc<str>,
    pub(crate) clock: Clock,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) replica_acks: u32,
}

/// The connections the tier sends its commands through.
pub(crate) enum Connections {
    /// Clients used in turn (fred routes cluster commands itself in an application's cluster
    /// client): standalone and sentinel deployments, and every client or pool the application
    /// owns.
    Fixed {
        links: Box<[Arc<Link>]>,
        next: AtomicUsize,
    },
    /// The tier's own cluster connections: one client per primary, chosen by hash slot.
    Routed(ClusterRouter),
}

impl Connections {
    /// `clients` used in turn, watched when the tier `owned` them.
    pub(crate) fn fixed(clients: Vec<Client>, owned: bool) -> Self {
        let links = clients
            .into_iter()
            .map(|client| Arc::new(Link::new(client, owned.then(Watchdog::new))))
            .collect();
        Connections::Fixed {
            links,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether the clients find their primary through sentinels.
    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self, Connections::Fixed { links, .. }
        if links.first().is_some_and(|link| matches!(
            link.client.client_config().server,
            ServerConfig::Sentinel { .. }
        )))
    }

    /// Whether these are the application's cluster clients (fred routes their commands).
    pub(crate) fn is_application_cluster(&self) -> bool {
        matches!(self, Connections::Fixed { links, .. }
            if links.first().is_some_and(|link| link.client.is_clustered()))
    }
}

/// One client the tier sends commands through, with its watchdog (the tier's own clients).
pub(crate) struct Link {
    pub(crate) client: Client,
    watchdog: Option<Watchdog>,
}

impl Link {
    pub(crate) fn new(client: Client, watchdog: Option<Watchdog>) -> Self {
        Link { client, watchdog }
    }

    /// Records that the server answered on this client.
    fn answered(&self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.answered();
        }
    }
}

struct Inner {
    connections: Connections,
    /// Through sentinels: what moves the clients when a failover is announced.
    watch: Option<SentinelWatch>,
    /// Whether the tier made (and so must close) the clients.
    owned: bool,
    closed: AtomicBool,
    clustered: bool,
    servers: Box<str>,
    /// Sent with every command: fred's timeout, and fail at once while disconnected.
    options: Options,
    namespace: Namespace,
    label: Arc<str>,
    clock: Clock,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    /// The replicas that must confirm each write.
    confirmation: Confirmation,
    counters: Counters,
}

/// Notices a connection that keeps timing out while Redis answers nothing on it, and has fred
/// reconnect it.
///
/// fred closes an unresponsive connection only after `max_timeout` *without a write*: under
/// steady traffic to a server that stopped answering (a half-open connection after a failover,
/// a blackholed network), every command times out and the connection is never replaced. The
/// watchdog forces one reconnection when an operation times out and nothing was answered on the
/// client for twice the command timeout.
pub(crate) struct Watchdog {
    started: Instant,
    /// Milliseconds from `started` to the last answer of the server.
    last_answer: AtomicU64,
    reconnecting: AtomicBool,
}

impl Watchdog {
    pub(crate) fn new() -> Self {
        Watchdog {
            started: Instant::now(),
            last_answer: AtomicU64::new(0),
            reconnecting: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn answered(&self) {
        self.last_answer.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// Whether the client should be reconnected now (and, if so, marks it reconnecting).
    fn should_reconnect(&self, silence: Duration) -> bool {
        let silent_for = self
            .now()
            .saturating_sub(self.last_answer.load(Ordering::Relaxed));
        u128::from(silent_for) >= silence.as_millis()
            && !self.reconnecting.swap(true, Ordering::AcqRel)
    }

    fn reconnected(&self) {
        self.answered();
        self.reconnecting.store(false, Ordering::Release);
    }
}

impl RedisBackend {
    /// The namespace when none is set: `tierkit`.
    pub const DEFAULT_NAMESPACE: &'static str = "tierkit";
    /// The command timeout when none is set: 1 s.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
    /// The connect timeout when none is set: 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The largest payload accepted when no limit is set: 16 MiB.
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 << 20;
    /// The `COUNT` hint of each `SCAN` page of [`clear`](Backend::clear).
    pub const SCAN_COUNT: u32 = 500;

    /// A builder connecting through `source`: a URL (`&str` or `String`), a fred
    /// [`Config`](fred::types::config::Config), or a fred [`Client`] or
    /// [`Pool`](fred::clients::Pool) the application owns. See [`RedisSource`].
    pub fn builder(source: impl Into<RedisSource>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(source.into())
    }

    /// Connects to `url` with every setting at its default: namespace `tierkit`, 1 s command
    /// timeout, 5 s connect timeout, 16 MiB values, one connection.
    ///
    /// # Errors
    ///
    /// As [`RedisBackendBuilder::build`].
    pub async fn from_url(url: &str) -> Result<Self, RedisError> {
        Self::builder(url).build().await
    }

    /// The reconnect policy used when none is set: exponential backoff from 100 ms, doubling,
    /// capped at 2 s between attempts (jitter included), with no limit on the number of
    /// attempts.
    #[must_use]
    pub fn default_reconnect_policy() -> ReconnectPolicy {
        ReconnectPolicy::new_exponential(0, 100, 2_000, 2)
    }

    /// The reconnection policy of a tier built from a cluster URL or `Config` (for the client
    /// of each primary): exponential from 100 ms, doubling, capped at 300 ms between attempts,
    /// forever.
    ///
    /// The cap is short so that a primary that restarts (without a replica to replace it) is
    /// served again within a few hundred milliseconds (see "Cluster node failures" on
    /// [`RedisBackend`]).
    #[must_use]
    pub fn default_cluster_reconnect_policy() -> ReconnectPolicy {
        ReconnectPolicy::new_exponential(0, 100, 300, 2)
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        let clustered = match &parts.connections {
            Connections::Fixed { links, .. } => {
                links.first().is_some_and(|link| link.client.is_clustered())
            }
            Connections::Routed(_) => true,
        };
        let options = Options {
            timeout: Some(parts.command_timeout),
            fail_fast: true,
            ..Options::default()
        };
        RedisBackend {
            inner: Arc::new(Inner {
                connections: parts.connections,
                watch: parts.watch,
                owned: parts.owned,
                closed: AtomicBool::new(false),
                clustered,
                servers: parts.servers.into_boxed_str(),
                options,
                namespace: parts.namespace,
                label: parts.label,
                clock: parts.clock,
                command_timeout: parts.command_timeout,
                connect_timeout: parts.connect_timeout,
                max_value_bytes: parts.max_value_bytes,
                confirmation: Confirmation::new(parts.replica_acks, parts.command_timeout),
                counters: Counters::new(),
            }),
        }
    }

    /// A snapshot of the tier's counters: undecodable values by reason, and values found
    /// expired. Shared by clones; starts at zero when the tier is built.
    #[must_use]
    pub fn stats(&self) -> RedisStats {
        self.inner.counters.snapshot()
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.inner.namespace.name()
    }

    /// The exact Redis key under which `key` is stored: `namespace:` followed by the key's
    /// canonical bytes.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tierkit_core::CacheKey;
    /// use tierkit_redis::RedisBackend;
    ///
    /// let tier = RedisBackend::builder("redis://127.0.0.1:6379").namespace("shop").build().await?;
    /// assert_eq!(&tier.redis_key(&CacheKey::new("cart:7")?)[..], b"shop:cart:7");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn redis_key(&self, key: &CacheKey) -> Bytes {
        self.inner.namespace.redis_key(key)
    }

    /// The fred clients the tier sends its commands through (one unless
    /// [`pool_size`](RedisBackendBuilder::pool_size) says otherwise), for commands of your
    /// own. With an owned source, do not `quit` them: use [`shutdown`](Self::shutdown).
    ///
    /// A tier built from a cluster URL or `Config` has one centralized client per primary, in
    /// no particular order, as of now (the set changes with the cluster's topology): a command
    /// for a key of another primary's slots gets a `MOVED` error.
    #[must_use]
    pub fn clients(&self) -> Vec<Client> {
        self.inner
            .links()
            .iter()
            .map(|link| link.client.clone())
            .collect()
    }

    /// Whether the tier talks to a Redis cluster.
    #[must_use]
    pub fn is_clustered(&self) -> bool {
        self.inner.clustered
    }

    /// The router of the tier's own cluster connections (tests).
    #[cfg(test)]
    pub(crate) fn router(&self) -> Option<&ClusterRouter> {
        match &self.inner.connections {
            Connections::Routed(router) => Some(router),
            Connections::Fixed { .. } => None,
        }
    }

    /// The bound of every round trip.
    #[must_use]
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// The largest payload `set` accepts, in bytes.
    #[must_use]
    pub fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes
    }

    /// How many replicas must confirm each write before the tier acknowledges it (see
    /// [`RedisBackendBuilder::replica_acks`]); 0 when writes are not confirmed.
    #[must_use]
    pub fn replica_acks(&self) -> u32 {
        self.inner.confirmation.replicas()
    }

    /// The clock that decides expiry.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Closes the connections the tier made (from a URL or a `Config`), waiting up to the
    /// command timeout for each; a tier built on an application's `Client` or `Pool` leaves
    /// them open. Afterwards, every operation of the tier and its clones fails with a permanent
    /// [`ErrorKind::Connection`] error. Calling it again does nothing.
    ///
    /// Dropping the last clone of a tier that was not shut down closes its connections in the
    /// background (when a tokio runtime is running).
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) || !self.inner.owned {
            return;
        }
        let timeout = self.inner.command_timeout;
        futures_util::future::join_all(
            self.inner
                .close()
                .iter()
                .map(|client| tokio::time::timeout(timeout, client.quit())),
        )
        .await;
    }

    fn span(&self, op: Op) -> tracing::Span {
        tracing::debug_span!("tierkit.redis", op = %op, namespace = %self.inner.namespace.name())
    }
}

/// Whether a read found bytes, nothing, or a key of another type.
enum Read {
    Found(Bytes),
    Missing,
    WrongType,
}

impl Inner {
    /// The connections in use: every fixed client, or the current primaries.
    fn links(&self) -> Vec<Arc<Link>> {
        match &self.connections {
            Connections::Fixed { links, .. } => links.to_vec(),
            Connections::Routed(router) => router.links(),
        }
    }

    /// Stops any topology refresh and the watch of the sentinels, and returns the clients to
    /// close.
    fn close(&self) -> Vec<Client> {
        let mut clients = match &self.connections {
            Connections::Fixed { links, .. } => {
                links.iter().map(|link| link.client.clone()).collect()
            }
            Connections::Routed(router) => router.close(),
        };
        if let Some(watch) = &self.watch {
            clients.extend(watch.close());
        }
        clients
    }

    /// The next of the fixed clients: they are used in turn.
    fn next_fixed(links: &[Arc<Link>], next: &AtomicUsize) -> Option<Arc<Link>> {
        let n = links.len();
        let index = if n <= 1 {
            0
        } else {
            next.fetch_add(1, Ordering::Relaxed) % n
        };
        links.get(index).cloned()
    }

    /// Records a timeout on `link`, and has fred reconnect it in the background when the
    /// server has answered nothing on it for twice the command timeout (see [`Watchdog`]).
    fn timed_out(&self, link: &Arc<Link>) {
        let Some(watchdog) = &link.watchdog else {
            return;
        };
        if !watchdog.should_reconnect(self.command_timeout.saturating_mul(2)) {
            return;
        }
        tracing::warn!(
            tier = %self.label,
            servers = %self.servers,
            "redis answered nothing for twice the command timeout; reconnecting"
        );
        let link = Arc::clone(link);
        let bound = self.connect_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, link.client.force_reconnection()).await;
            if let Some(watchdog) = &link.watchdog {
                watchdog.reconnected();
            }
        });
    }

    /// The error of an operation on a tier that was shut down, if it was.
    fn check_open(&self, op: Op) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BackendError::tier(
                Arc::clone(&self.label),
                op,
                ErrorKind::Connection,
                false,
                ShutDown,
            ));
        }
        Ok(())
    }

    /// Runs one round trip for the Redis key `key`, bounded by the command timeout: through
    /// the next fixed client, or through the primary serving the key's slot (following one
    /// `MOVED` redirection within the same time bound).
    async fn call<T, F, Fut>(&self, op: Op, key: &[u8], command: F) -> Result<T>
    where
        F: Fn(WithOptions<Client>) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        self.check_open(op)?;
        let router = match &self.connections {
            Connections::Fixed { links, next } => {
                let link = Self::next_fixed(links, next).ok_or_else(|| no_client(self, op))?;
                return self
                    .attempt(op, &self.options, self.command_timeout, &link, command)
                    .await
                    .map_err(|(err, _)| err);
            }
            Connections::Routed(router) => router,
        };
        let started = Instant::now();
        let slot = fred::util::redis_keyslot(key);
        let Some(link) = router.link_for(slot) else {
            router.refresh_soon();
            return Err(BackendError::connection(
                Arc::clone(&self.label),
                op,
                FredError::new(
                    FredKind::Cluster,
                    format!("no known primary serves hash slot {slot}"),
                ),
            ));
        };
        let (err, moved) = match self
            .attempt(op, &self.options, self.command_timeout, &link, &command)
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(failure) => failure,
        };
        if err.is_transient() {
            router.refresh_soon();
        }
        // MOVED: the slot has another owner (the refresh above installs it for the next
        // commands); retry once on it, within what is left of the time bound.
        let remaining = self.command_timeout.saturating_sub(started.elapsed());
        let Some(owner) = moved
            .filter(|_| !remaining.is_zero())
            .and_then(|(host, port)| router.link_at(&host, port))
            .filter(|owner| !Arc::ptr_eq(owner, &link))
        else {
            return Err(err);
        };
        let options = Options {
            timeout: Some(remaining),
            ..self.options.clone()
        };
        self.attempt(op, &options, remaining, &owner, command)
            .await
            .map_err(|(err, _)| err)
    }

    /// Runs one round trip on `link` with `options`, bounded by `bound`. A failure comes with
    /// the node a `MOVED` error names.
    async fn attempt<T, F, Fut>(
        &self,
        op: Op,
        options: &Options,
        bound: Duration,
        link: &Arc<Link>,
        command: F,
    ) -> Result<T, (BackendError, Option<(String, u16)>)>
    where
        F: FnOnce(WithOptions<Client>) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        let client = link.client.with_options(options);
        // fred's command futures are several kilobytes: boxed once here, the futures of the
        // tier's operations (and the box a `TierFuture` puts them in) stay small, instead of
        // copying the command's state at every level they are moved through.
        let command = Box::pin(command(client));
        // fred's own timeout (in `options`) fires first when both are due: it also tells fred to
        // drop the command instead of sending it late. This one bounds everything else.
        match tokio::time::timeout(bound, command).await {
            Ok(Ok(reply)) => {
                link.answered();
                Ok(reply)
            }
            Ok(Err(err)) => {
                let moved = cluster::moved_to(&err);
                let err = map_error(&self.label, op, self.command_timeout, err);
                match err.kind() {
                    ErrorKind::Timeout => self.timed_out(link),
                    ErrorKind::Connection if moved.is_none() => {}
                    // Any other error is an answer of the server.
                    _ => link.answered(),
                }
                Err((err, moved))
            }
            Err(_elapsed) => {
                self.timed_out(link);
                Err((
                    BackendError::timeout(Arc::clone(&self.label), op, self.command_timeout),
                    None,
                ))
            }
        }
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<CacheValue>> {
        let redis_key = self.namespace.redis_key(key);
        let read = self
            .call(Op::Get, &redis_key, |client| {
                let redis_key = redis_key.clone();
                async move {
                    match client.get::<Option<Bytes>, _>(redis_key).await {
                        Ok(Some(bytes)) => Ok(Read::Found(bytes)),
                        Ok(None) => Ok(Read::Missing),
                        Err(err) if is_wrong_type(&err) => Ok(Read::WrongType),
                        Err(err) => Err(err),
                    }
                }
            })
            .await?;
        let bytes = match read {
            Read::Found(bytes) => bytes,
            Read::Missing => return Ok(None),
            Read::WrongType => {
                self.counters.decode_error(WRONG_TYPE);
                tracing::debug!(
                    key_len = key.len(),
                    reason = WRONG_TYPE,
                    "the key holds another Redis type than a string; answered as a miss"
                );
                return Ok(None);
            }
        };
        match envelope::decode(&bytes, key) {
            Ok(value) if value.is_expired(self.clock.now()) => {
                self.counters.expired_read();
                Ok(None)
            }
            Ok(value) => Ok(Some(value)),
            Err(malformed) => {
                self.counters.malformed(&malformed);
                tracing::debug!(
                    key_len = key.len(),
                    value_len = bytes.len(),
                    reason = malformed.reason(),
                    detail = %malformed,
                    "undecodable value in Redis; answered as a miss"
                );
                Ok(None)
            }
        }
    }

    /// Refuses a payload larger than `max_value_bytes`.
    fn check_size(&self, value: &CacheValue) -> Result<()> {
        let len = value.payload().len();
        if len > self.max_value_bytes {
            return Err(BackendError::invalid_value(
                Arc::clone(&self.label),
                format!(
                    "a payload of {len} bytes is larger than the tier's max_value_bytes ({})",
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn set(&self, key: &CacheKey, value: CacheValue) -> Result<()> {
        self.check_size(&value)?;
        let redis_key = self.namespace.redis_key(key);
        if value.is_expired(self.clock.now()) {
            // The newest write says "nothing valid here": drop any older value.
            return self
                .write(Op::Set, &redis_key, || {
                    Write::Unlink(vec![Key::from(redis_key.clone())])
                })
                .await;
        }
        let expiry = expiration(value.expires_at());
        let bytes = envelope::encode(&value, key);
        self.write(Op::Set, &redis_key, || Write::Set {
            key: redis_key.clone(),
            bytes: bytes.clone(),
            expiry: expiry.clone(),
        })
        .await
    }

    /// `set`, unless the key holds a live value created later: one script ([`script`]), so the
    /// comparison and the write are one atomic step on the server. One `EVALSHA` round trip;
    /// the first on a server that does not have the script cached adds an `EVAL`. With
    /// replica confirmation (`replica_acks`), a `WAIT` on the same connection follows.
    async fn set_if_newer(&self, key: &CacheKey, value: CacheValue) -> Result<()> {
        self.check_size(&value)?;
        let redis_key = self.namespace.redis_key(key);
        let now = self.clock.now();
        let (bytes, pxat) = if value.is_expired(now) {
            // Removes the key, under the same condition.
            (Bytes::new(), None)
        } else {
            (envelope::encode(&value, key), pxat(value.expires_at()))
        };
        let slot = fred::util::redis_keyslot(&redis_key);
        let arguments = script::arguments(redis_key.clone(), bytes, value.created_at(), now, pxat);
        let confirmation = self.confirmation;
        self.call(Op::Set, &redis_key, |client| {
            let with_sha = script::command(script::SHA1, &arguments);
            let with_source = script::command(script::SOURCE, &arguments);
            async move {
                match client
                    .custom::<Value, Value>(script::evalsha(slot), with_sha)
                    .await
                {
                    Err(err) if script::is_noscript(err.details()) => {
                        client
                            .custom::<Value, Value>(script::eval(slot), with_source)
                            .await
                    }
                    answer => answer,
                }?;
                // Acknowledged like every write: once the replicas required hold it.
                confirmation.confirm(&client).await
            }
        })
        .await
    }

    async fn delete(&self, key: &CacheKey) -> Result<()> {
        let redis_key = self.namespace.redis_key(key);
        self.write(Op::Delete, &redis_key, || {
            Write::Unlink(vec![Key::from(redis_key.clone())])
        })
        .await
    }

    /// Runs one write for the Redis key `key` (see [`call`](Self::call)), acknowledged once
    /// the replicas the tier requires confirm it (see [`Confirmation`]).
    async fn write(&self, op: Op, key: &[u8], write: impl Fn() -> Write) -> Result<()> {
        let confirmation = self.confirmation;
        self.call(op, key, |client| confirmation.send(client, write()))
            .await
    }

    async fn clear(&self) -> Result<()> {
        self.check_open(Op::Clear)?;
        let nodes: Vec<ScanOn> = match &self.connections {
            Connections::Routed(router) => router.links().into_iter().map(ScanOn::Link).collect(),
            Connections::Fixed { links, .. } if self.clustered => {
                let routing = links
                    .first()
                    .and_then(|link| link.client.cached_cluster_state());
                let Some(routing) = routing else {
                    return Err(BackendError::connection(
                        Arc::clone(&self.label),
                        Op::Clear,
                        FredError::new(
                            FredKind::Cluster,
                            "the cluster's routing table is not known",
                        ),
                    ));
                };
                routing
                    .unique_primary_nodes()
                    .into_iter()
                    .map(ScanOn::ClusterNode)
                    .collect()
            }
            Connections::Fixed { .. } => vec![ScanOn::Any],
        };
        futures_util::future::try_join_all(nodes.into_iter().map(|node| self.clear_node(node)))
            .await?;
        Ok(())
    }

    /// Scans one primary and removes every key of the namespace on it, page by page.
    async fn clear_node(&self, node: ScanOn) -> Result<()> {
        let (link, options) = match node {
            ScanOn::Link(link) => (link, self.options.clone()),
            ScanOn::Any | ScanOn::ClusterNode(_) => {
                let Connections::Fixed { links, next } = &self.connections else {
                    return Err(no_client(self, Op::Clear));
                };
                let link =
                    Self::next_fixed(links, next).ok_or_else(|| no_client(self, Op::Clear))?;
                let cluster_node = match node {
                    ScanOn::ClusterNode(server) => Some(server),
                    _ => None,
                };
                let options = Options {
                    cluster_node,
                    ..self.options.clone()
                };
                (link, options)
            }
        };
        let mut cursor = String::from("0");
        loop {
            let pattern = self.namespace.pattern().to_owned();
            let page: Value = self
                .attempt(
                    Op::Clear,
                    &options,
                    self.command_timeout,
                    &link,
                    |client| async move {
                        client
                            .scan_page(cursor, pattern, Some(RedisBackend::SCAN_COUNT), None)
                            .await
                    },
                )
                .await
                .map_err(|(err, _)| {
                    if let Connections::Routed(router) = &self.connections
                        && err.is_transient()
                    {
                        router.refresh_soon();
                    }
                    err
                })?;
            let (next, keys) = parse_scan_page(page)
                .map_err(|err| map_error(&self.label, Op::Clear, self.command_timeout, err))?;
            if !keys.is_empty() {
                self.unlink(keys).await?;
            }
            if next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Removes `keys`: in one `UNLINK`, or in a cluster one per hash slot.
    async fn unlink(&self, keys: Vec<Key>) -> Result<()> {
        if !self.clustered {
            return self
                .write(Op::Clear, &[], || Write::Unlink(keys.clone()))
                .await;
        }
        let mut by_slot: BTreeMap<u16, Vec<Key>> = BTreeMap::new();
        for key in keys {
            by_slot.entry(key.cluster_hash()).or_default().push(key);
        }
        futures_util::future::try_join_all(by_slot.into_values().map(|keys| async move {
            let first = keys
                .first()
                .map(|key| key.as_bytes().to_vec())
                .unwrap_or_default();
            self.write(Op::Clear, &first, || Write::Unlink(keys.clone()))
                .await
        }))
        .await?;
        Ok(())
    }
}

/// Which server a `SCAN` of `clear` runs on.
enum ScanOn {
    /// The only server (standalone, sentinel).
    Any,
    /// A primary of an application's cluster client, through fred's routing.
    ClusterNode(Server),
    /// A primary of the tier's own cluster connections.
    Link(Arc<Link>),
}

/// The error of a tier without any client (not expected: `build` refuses an empty pool).
fn no_client(inner: &Inner, op: Op) -> BackendError {
    BackendError::connection(
        Arc::clone(&inner.label),
        op,
        FredError::new(FredKind::Routing, "the redis tier has no client"),
    )
}

/// `SET ... PXAT expires_at`, or no expiry past the year 9999.
fn expiration(expires_at: Timestamp) -> Option<Expiration> {
    pxat(expires_at).map(Expiration::PXAT)
}

/// The `PXAT` of `expires_at`, or none past the year 9999.
fn pxat(expires_at: Timestamp) -> Option<i64> {
    let millis = expires_at.as_unix_millis();
    if millis > MAX_PXAT_MILLIS {
        return None;
    }
    i64::try_from(millis).ok()
}

fn is_wrong_type(err: &FredError) -> bool {
    err.details().starts_with("WRONGTYPE")
}

/// Takes a `SCAN` reply apart: the next cursor and the page's keys.
fn parse_scan_page(page: Value) -> Result<(String, Vec<Key>), FredError> {
    let malformed = || FredError::new(FredKind::Protocol, "unexpected SCAN reply");
    let Value::Array(mut parts) = page else {
        return Err(malformed());
    };
    let (Some(keys), Some(cursor), true) = (parts.pop(), parts.pop(), parts.is_empty()) else {
        return Err(malformed());
    };
    let cursor = cursor
        .into_bytes()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .ok_or_else(malformed)?;
    let keys = match keys {
        Value::Array(keys) => keys
            .into_iter()
            .map(|key| key.into_bytes().map(Key::from).ok_or_else(malformed))
            .collect::<Result<Vec<_>, _>>()?,
        Value::Null => Vec::new(),
        _ => return Err(malformed()),
    };
    Ok((cursor, keys))
}

/// The source of the error of an operation on a tier that was shut down.
#[derive(Debug)]
struct ShutDown;

impl fmt::Display for ShutDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the redis tier was shut down")
    }
}

impl std::error::Error for ShutDown {}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.owned || *self.closed.get_mut() {
            return;
        }
        // Close the connections the tier made; without a runtime, fred's tasks are gone anyway.
        let clients = self.close();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let timeout = self.command_timeout;
            for client in clients {
                drop(runtime.spawn(async move {
                    let _ = tokio::time::timeout(timeout, client.quit()).await;
                }));
            }
        }
    }
}

impl fmt::Debug for RedisBackend {
    /// The label, the namespace, the servers (`host:port`) and the settings; never credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisBackend")
            .field("label", &inner.label)
            .field("namespace", &inner.namespace.name())
            .field("servers", &inner.servers)
            .field("clustered", &inner.clustered)
            .field("connections", &inner.links().len())
            .field("owned", &inner.owned)
            .field("command_timeout", &inner.command_timeout)
            .field("max_value_bytes", &inner.max_value_bytes)
            .field("replica_acks", &inner.confirmation.replicas())
            .field("clock", &inner.clock)
            .finish_non_exhaustive()
    }
}

impl Backend for RedisBackend {
    fn label(&self) -> &str {
        &self.inner.label
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        TierFuture::pending(self.inner.get(key).instrument(self.span(Op::Get)))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(self.inner.set(key, value).instrument(self.span(Op::Set)))
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(
            self.inner
                .set_if_newer(key, value)
                .instrument(self.span(Op::Set)),
        )
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        TierFuture::pending(self.inner.delete(key).instrument(self.span(Op::Delete)))
    }

    fn clear(&self) -> WriteFuture<'_> {
        TierFuture::pending(self.inner.clear().instrument(self.span(Op::Clear)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_pxat_until_year_9999() {
        let at = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(expiration(at), Some(Expiration::PXAT(1_700_000_000_123)));
        assert_eq!(
            expiration(Timestamp::from_unix_millis(MAX_PXAT_MILLIS)),
            Some(Expiration::PXAT(253_402_300_799_999))
        );
        assert_eq!(
            expiration(Timestamp::from_unix_millis(MAX_PXAT_MILLIS + 1)),
            None
        );
        assert_eq!(expiration(Timestamp::MAX), None);
    }

    #[test]
    fn scan_pages_are_parsed() {
        let page = Value::Array(vec![
            Value::from("17"),
            Value::Array(vec![
                Value::from("ns:a"),
                Value::Bytes(Bytes::from_static(b"ns:\0\xff")),
            ]),
        ]);
        let (cursor, keys) = parse_scan_page(page).unwrap();
        assert_eq!(cursor, "17");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].as_bytes(), b"ns:\0\xff");
        let last = Value::Array(vec![Value::from("0"), Value::Array(vec![])]);
        assert_eq!(parse_scan_page(last).unwrap(), ("0".to_owned(), vec![]));
        for bad in [
            Value::Null,
            Value::Array(vec![Value::from("0")]),
            Value::Array(vec![Value::from("0"), Value::from(1), Value::from(2)]),
            Value::Array(vec![Value::from("0"), Value::Integer(3)]),
        ] {
            assert!(parse_scan_page(bad).is_err());
        }
    }
}
