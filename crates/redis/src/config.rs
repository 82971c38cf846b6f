//! The builder of [`RedisBackend`], and how its connection is made.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::config::{
    Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy, ServerConfig, TcpConfig,
    UnresponsiveConfig,
};
use tierkit_core::{Clock, ErrorKind, envelope, redact};

use crate::backend::{Connections, Parts, RedisBackend};
use crate::cluster::{ClusterRouter, NodeSettings};
use crate::error::{RedisError, classify, url_wants_tls};
use crate::keys::Namespace;
use crate::sentinel::SentinelWatch;

/// Where a [`RedisBackend`] gets its connection: a URL, a fred [`Config`], or a fred [`Client`]
/// or [`Pool`] the application already runs.
///
/// Everything [`RedisBackend::builder`] accepts converts into it: `&str` and `String` (URLs),
/// [`Config`], [`Client`] and [`Pool`].
///
/// * From a URL or a [`Config`], the tier owns its connections: it connects them in
///   [`build`](RedisBackendBuilder::build) and closes them in
///   [`shutdown`](RedisBackend::shutdown) or when its last clone is dropped. The builder's
///   timeouts, reconnect policy and pool size apply, plus `TCP_NODELAY` and fred's
///   unresponsive-connection check (twice the command timeout); the `Config`'s `fail_fast` is
///   forced on, so that a failed first connection is reported by `build` instead of retried in
///   the background.
/// * From a [`Client`] or a [`Pool`], the application owns them: the tier never connects
///   (`init`) nor closes (`quit`) them, and leaves their configuration alone. `build` only
///   waits, up to the connect timeout, for them to be connected, so connect them first.
///
/// Its `Debug` form never shows credentials: a URL is shown through
/// [`redact::url`](tierkit_core::redact::url) (user-info and secret query parameters such as
/// `sentinelPassword` replaced by `***`), a `Config` as its servers only.
#[non_exhaustive]
pub enum RedisSource {
    /// A URL in one of the forms of [`Config::from_url`]; see the
    /// [crate docs](crate#connecting) for the grammar.
    Url(String),
    /// A fred configuration (boxed: it is large).
    Config(Box<Config>),
    /// A client the application owns.
    Client(Client),
    /// A pool of clients the application owns; the tier spreads its commands over the pool's
    /// clients in turn.
    Pool(Pool),
}

impl From<&str> for RedisSource {
    fn from(url: &str) -> Self {
        RedisSource::Url(url.to_owned())
    }
}

impl From<String> for RedisSource {
    fn from(url: String) -> Self {
        RedisSource::Url(url)
    }
}

impl From<&String> for RedisSource {
    fn from(url: &String) -> Self {
        RedisSource::Url(url.clone())
    }
}

impl From<Config> for RedisSource {
    fn from(config: Config) -> Self {
        RedisSource::Config(Box::new(config))
    }
}

impl From<Client> for RedisSource {
    fn from(client: Client) -> Self {
        RedisSource::Client(client)
    }
}

impl From<Pool> for RedisSource {
    fn from(pool: Pool) -> Self {
        RedisSource::Pool(pool)
    }
}

impl fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisSource::Url(url) => f.debug_tuple("Url").field(&redact::url(url)).finish(),
            RedisSource::Config(config) => f
                .debug_struct("Config")
                .field("servers", &describe_servers(&config.server))
                .finish_non_exhaustive(),
            RedisSource::Client(client) => f
                .debug_struct("Client")
                .field("id", &client.id())
                .finish_non_exhaustive(),
            RedisSource::Pool(pool) => f
                .debug_struct("Pool")
                .field("size", &pool.size())
                .finish_non_exhaustive(),
        }
    }
}

/// Builds a [`RedisBackend`]; start with [`RedisBackend::builder`].
///
/// Every setter consumes the builder and returns it, and says its default;
/// [`build`](RedisBackendBuilder::build) is the only exit. Nothing here panics: out-of-range
/// settings are reported by `build` as [`RedisError::InvalidConfig`] or
/// [`RedisError::InvalidNamespace`].
///
/// ```
/// use std::time::Duration;
/// use tierkit_redis::RedisBackend;
///
/// let builder = RedisBackend::builder("redis://:s3cret@127.0.0.1:6379/0")
///     .namespace("shop")
///     .command_timeout(Duration::from_millis(250))
///     .connect_timeout(Duration::from_secs(2))
///     .max_value_bytes(1 << 20)
///     .label("l2-redis");
/// // Credentials never show in `Debug`.
/// assert!(!format!("{builder:?}").contains("s3cret"));
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct RedisBackendBuilder {
    source: RedisSource,
    namespace: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    clock: Clock,
    label: Arc<str>,
    pool_size: usize,
    reconnect: Option<ReconnectPolicy>,
    replica_acks: Option<u32>,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("source", &self.source)
            .field("namespace", &self.namespace)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("clock", &self.clock)
            .field("label", &self.label)
            .field("pool_size", &self.pool_size)
            .field("reconnect", &self.reconnect)
            .field("replica_acks", &self.replica_acks)
            .finish()
    }
}

impl RedisBackendBuilder {
    pub(crate) fn new(source: RedisSource) -> Self {
        RedisBackendBuilder {
            source,
            namespace: RedisBackend::DEFAULT_NAMESPACE.to_owned(),
            command_timeout: RedisBackend::DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: RedisBackend::DEFAULT_CONNECT_TIMEOUT,
            max_value_bytes: RedisBackend::DEFAULT_MAX_VALUE_BYTES,
            clock: Clock::System,
            label: Arc::from("redis"),
            pool_size: 1,
            reconnect: None,
            replica_acks: None,
        }
    }

    /// The namespace: every key the tier writes is the namespace (with `%` and `:` written
    /// `%25` and `%3A`), `:`, then the cache key, and [`clear`](tierkit_core::Backend::clear)
    /// removes exactly the namespace's keys: none of another namespace, nested (`shop:eu`
    /// under `shop`) or not.
    ///
    /// It must not be empty and must not contain `{` or `}` (they would turn the namespace into
    /// a cluster hash tag and send every key to one slot; put hash tags in your keys instead,
    /// see [`RedisBackend`]); `build` rejects such a namespace with
    /// [`RedisError::InvalidNamespace`]. Glob characters (`*`, `?`, `[`, `]`, `\`) are fine:
    /// `clear` escapes them.
    ///
    /// Default: [`RedisBackend::DEFAULT_NAMESPACE`] (`tierkit`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// The time bound of every round trip: `get`, `set` and `delete` fail with
    /// [`BackendError::Timeout`](tierkit_core::BackendError::Timeout) when Redis has not
    /// answered within it, and so does each step (one `SCAN` page, one `UNLINK` batch) of
    /// `clear`.
    ///
    /// The bound is enforced twice: as fred's command timeout (so fred drops the command
    /// rather than sending it late) and around each call (so nothing can outlive it). Commands
    /// are also sent with fred's `fail_fast`: while the connection is down (fred is
    /// reconnecting) they fail at once with a transient
    /// [`ErrorKind::Connection`] error instead of queueing.
    ///
    /// Default: [`RedisBackend::DEFAULT_COMMAND_TIMEOUT`] (1 s). Must not be zero.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The time bound of [`build`](Self::build): opening the connection(s), the handshake
    /// (`AUTH`/`HELLO`, `PING`, `SELECT`, reading the cluster's slots). It is also fred's TCP
    /// connection timeout and handshake timeout on every reconnection.
    ///
    /// With a [`Client`] or [`Pool`] source, `build` waits this long for them to be connected.
    ///
    /// Default: [`RedisBackend::DEFAULT_CONNECT_TIMEOUT`] (5 s). Must not be zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest payload `set` accepts, in bytes. A larger one is rejected with
    /// [`ErrorKind::InvalidValue`] and nothing is written (the key keeps whatever it held).
    /// The stored envelope is [`HEADER_LEN`](tierkit_core::envelope::HEADER_LEN) (37) bytes,
    /// plus 2 and the key's length (its echo), larger than the payload. Values above the envelope's own limit (4 GiB - 1) are clamped
    /// to it; Redis' `proto-max-bulk-len` (512 MB by default) also applies.
    ///
    /// Default: [`RedisBackend::DEFAULT_MAX_VALUE_BYTES`] (16 MiB).
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }

    /// The clock that decides whether a value read from Redis has expired, and whether a value
    /// being written already has.
    ///
    /// Default: [`Clock::System`]. Redis expires keys by its own clock (`PXAT`), so the tier's
    /// clock should not run behind Redis' (see [`RedisBackend`], "Expiry").
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The tier's label, used in errors (and by compositions in spans and metrics).
    ///
    /// Default: `"redis"`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Arc::from(label);
        self
    }

    /// How many connections (fred clients) the tier opens, used in turn. One client already
    /// pipelines the commands of every task automatically; more help only when one connection
    /// is saturated (very large values, many cores).
    ///
    /// Applies to standalone and sentinel URL and [`Config`] sources; ignored with a
    /// [`Client`] or [`Pool`], and for a cluster (the tier opens one client per primary).
    ///
    /// Default: 1. Must not be zero.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How many replicas must hold a write (`set`, `delete`, each batch of `clear`) before the
    /// tier acknowledges it.
    ///
    /// Redis replicates asynchronously: a primary acknowledges a write before its replicas
    /// have it. When a sentinel promotes a replica while the old primary still runs (a planned
    /// `SENTINEL FAILOVER`, a network partition), the old primary keeps acknowledging writes
    /// until the sentinel demotes it, 10 to 20 seconds later, and then discards them all for a
    /// copy of the new primary: values written meanwhile are lost, and deleted keys come back.
    /// With `replica_acks(n)`, each write is followed in the same round trip by
    /// `WAIT n <half the command timeout>`, and succeeds only when `n` replicas confirmed it;
    /// otherwise it fails with a transient [`ErrorKind::Connection`] error (the write is on the
    /// primary and may be lost with it). A promoted replica stops confirming its old primary's
    /// writes at once, so no write the old primary takes after the promotion is acknowledged.
    ///
    /// The cost: every write waits for one round trip from the primary to its replicas (a
    /// fraction of a millisecond on a LAN), and commands pipelined behind it on the same
    /// connection wait with it (raise [`pool_size`](Self::pool_size) if writes are most of the
    /// traffic). While fewer than `n` replicas are connected (a replica restarting), every
    /// write fails after half the command timeout; reads are not affected. After a failover,
    /// that lasts until the new primary has `n` replicas again: with a single replica, until
    /// the old primary, demoted, has copied the new one (10 to 20 seconds after the promotion).
    ///
    /// With one replica, `1` covers every promotion. With several, a write confirmed by one
    /// replica is lost if the sentinel promotes another that did not have it yet: set `n` to
    /// the number of replicas to cover that too, at the price of failed writes whenever one of
    /// them is down.
    ///
    /// Default: 1 for a sentinel deployment (a sentinel URL or [`Config`], or a [`Client`] or
    /// [`Pool`] connected through sentinels), 0 (no confirmation, no `WAIT`) otherwise. Applies
    /// to standalone, sentinel and cluster deployments (in a cluster, each primary waits for
    /// its own replicas), except a cluster [`Client`] or [`Pool`] of the application, which
    /// `build` refuses with a non-zero value ([`RedisError::InvalidConfig`]).
    pub fn replica_acks(mut self, replicas: u32) -> Self {
        self.replica_acks = Some(replicas);
        self
    }

    /// fred's policy for reconnecting after a connection drops. Reconnection is automatic and
    /// in the background; meanwhile operations fail at once (see
    /// [`command_timeout`](Self::command_timeout)). The first connection is not retried:
    /// [`build`](Self::build) reports its failure.
    ///
    /// Applies to URL and [`Config`] sources; ignored with a [`Client`] or [`Pool`] (they keep
    /// their own).
    ///
    /// Default: [`RedisBackend::default_reconnect_policy`] (exponential from 100 ms, doubling,
    /// capped at 2 s between attempts, forever), or in a cluster
    /// [`RedisBackend::default_cluster_reconnect_policy`] for the client of each primary
    /// (capped at 300 ms: see "Cluster node failures" on [`RedisBackend`]).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Connects and builds the tier.
    ///
    /// Returns once every connection is established and has answered its handshake, or fails
    /// within the [connect timeout](Self::connect_timeout).
    ///
    /// # Errors
    ///
    /// * [`RedisError::InvalidNamespace`], [`RedisError::InvalidConfig`] (a zero timeout or pool
    ///   size), [`RedisError::InvalidUrl`], [`RedisError::TlsNotEnabled`]: before any
    ///   connection is attempted.
    /// * [`RedisError::Connect`]: a server refused the connection or the credentials, or is not
    ///   of the kind configured (a cluster URL for a standalone server).
    /// * [`RedisError::ConnectTimeout`]: not connected within the connect timeout.
    ///
    /// Messages name the servers (`host:port`) and never contain a password, token or secret.
    pub async fn build(self) -> Result<RedisBackend, RedisError> {
        ensure_crypto_provider();
        let namespace = Namespace::new(&self.namespace)?;
        if self.command_timeout.is_zero() {
            return Err(invalid_config("command_timeout must not be zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid_config("connect_timeout must not be zero"));
        }
        if self.pool_size == 0 {
            return Err(invalid_config("pool_size must not be zero"));
        }
        let connect = Connect {
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            pool_size: self.pool_size,
            reconnect: self.reconnect,
        };
        let (clients, owned, servers, watch) = match self.source {
            RedisSource::Url(url) => {
                if url_wants_tls(&url) && !cfg!(feature = "tls") {
                    return Err(RedisError::TlsNotEnabled {
                        url: redact::url(&url),
                    });
                }
                let config = Config::from_url(&url).map_err(|source| RedisError::InvalidUrl {
                    url: redact::url(&url),
                    source,
                })?;
                let (connections, servers, watch) = connect.owned(config).await?;
                (connections, true, servers, watch)
            }
            RedisSource::Config(config) => {
                let (connections, servers, watch) = connect.owned(*config).await?;
                (connections, true, servers, watch)
            }
            RedisSource::Client(client) => {
                let servers = connect.attach(std::slice::from_ref(&client)).await?;
                (
                    Connections::fixed(vec![client], false),
                    false,
                    servers,
                    None,
                )
            }
            RedisSource::Pool(pool) => {
                let clients = pool.clients().to_vec();
                let servers = connect.attach(&clients).await?;
                (Connections::fixed(clients, false), false, servers, None)
            }
        };
        let replica_acks = match self.replica_acks {
            Some(replicas) if replicas > 0 && clients.is_application_cluster() => {
                return Err(invalid_config(
                    "replica_acks needs the tier's own cluster connections (a cluster URL or \
                     Config), not a cluster Client or Pool of the application",
                ));
            }
            Some(replicas) => replicas,
            None => u32::from(clients.is_sentinel()),
        };
        Ok(RedisBackend::from_parts(Parts {
            connections: clients,
            watch,
            owned,
            servers,
            namespace,
            label: self.label,
            clock: self.clock,
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            max_value_bytes: self.max_value_bytes.min(envelope::MAX_PAYLOAD),
            replica_acks,
        }))
    }
}

fn invalid_config(reason: &str) -> RedisError {
    RedisError::InvalidConfig {
        reason: reason.to_owned(),
    }
}

/// The servers of a configuration as `host:port`, comma-separated (and the service name for a
/// sentinel deployment). Never credentials.
pub(crate) fn describe_servers(server: &ServerConfig) -> String {
    let mut hosts: Vec<String> = Vec::new();
    for host in server.hosts() {
        let host = host.to_string();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let hosts = hosts.join(", ");
    match server {
        ServerConfig::Sentinel { service_name, .. } => {
            format!("{hosts} (sentinels of service {service_name:?})")
        }
        _ => hosts,
    }
}

/// With the `tls` feature, installs ring as rustls' process-wide crypto provider unless one is
/// installed already. fred builds its TLS settings from the process default, and rustls cannot
/// pick one by itself when another crate of the application enables a second provider (the
/// AWS SDK enables aws-lc-rs, for instance): it would panic at the first `rediss://`
/// connection. An application that installs its own provider first keeps it.
fn ensure_crypto_provider() {
    #[cfg(feature = "tls")]
    {
        // Err means a provider is installed already: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The connection settings of one `build`.
struct Connect {
    command_timeout: Duration,
    connect_timeout: Duration,
    pool_size: usize,
    reconnect: Option<ReconnectPolicy>,
}

impl Connect {
    /// Creates and connects `pool_size` clients from `config`, all within the connect timeout;
    /// for a cluster, one client per primary instead (see [`ClusterRouter`]). Through
    /// sentinels, also the watch that moves the clients when a failover is announced.
    async fn owned(
        &self,
        mut config: Config,
    ) -> Result<(Connections, String, Option<SentinelWatch>), RedisError> {
        let servers = describe_servers(&config.server);
        // Report a failed first connection instead of retrying it in the background.
        config.fail_fast = true;
        let perf = PerformanceConfig {
            default_command_timeout: self.command_timeout,
            ..PerformanceConfig::default()
        };
        // A connection whose server has not answered anything for twice the command timeout
        // is dead (every command on it has timed out already): fred closes it and reconnects.
        let unresponsive = self.command_timeout.saturating_mul(2);
        let connection = ConnectionConfig {
            connection_timeout: self.connect_timeout,
            internal_command_timeout: self.connect_timeout,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(unresponsive),
                interval: (unresponsive / 4).max(Duration::from_millis(10)),
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            ..ConnectionConfig::default()
        };
        if config.server.is_clustered() {
            let seeds = config.server.hosts();
            let settings = NodeSettings {
                config,
                perf,
                connection,
                reconnect: self
                    .reconnect
                    .clone()
                    .unwrap_or_else(RedisBackend::default_cluster_reconnect_policy),
                command_timeout: self.command_timeout,
                connect_timeout: self.connect_timeout,
            };
            let router = ClusterRouter::connect(settings, seeds, &servers).await?;
            return Ok((Connections::Routed(router), servers, None));
        }
        let reconnect = self
            .reconnect
            .clone()
            .unwrap_or_else(RedisBackend::default_reconnect_policy);
        let clients: Vec<Client> = (0..self.pool_size)
            .map(|_| {
                Client::new(
                    config.clone(),
                    Some(perf.clone()),
                    Some(connection.clone()),
                    Some(reconnect.clone()),
                )
            })
            .collect();
        let init = futures_util::future::try_join_all(clients.iter().map(ClientLike::init));
        match tokio::time::timeout(self.connect_timeout, init).await {
            // The handles of fred's connection tasks are not needed: `quit` ends them.
            Ok(Ok(_handles)) => {
                let watch = SentinelWatch::start(
                    &config,
                    &reconnect,
                    clients.clone(),
                    self.connect_timeout,
                );
                Ok((Connections::fixed(clients, true), servers, watch))
            }
            Ok(Err(source)) => {
                abandon(&clients, self.connect_timeout);
                let (kind, transient) = connect_classify(&source);
                Err(RedisError::Connect {
                    servers,
                    kind,
                    transient,
                    source,
                })
            }
            Err(_elapsed) => {
                abandon(&clients, self.connect_timeout);
                Err(RedisError::ConnectTimeout {
                    servers,
                    after: self.connect_timeout,
                })
            }
        }
    }

    /// Waits, within the connect timeout, until every client the application owns is
    /// connected.
    async fn attach(&self, clients: &[Client]) -> Result<String, RedisError> {
        let Some(first) = clients.first() else {
            return Err(invalid_config("the pool has no clients"));
        };
        let servers = describe_servers(&first.client_config().server);
        let waits = clients
            .iter()
            .filter(|client| !client.is_connected())
            .map(ClientLike::wait_for_connect);
        let waited =
            tokio::time::timeout(self.connect_timeout, futures_util::future::join_all(waits)).await;
        if let Ok(results) = waited
            && let Some(source) = results.into_iter().find_map(Result::err)
        {
            let (kind, transient) = connect_classify(&source);
            return Err(RedisError::Connect {
                servers,
                kind,
                transient,
                source,
            });
        }
        // `wait_for_connect` can miss a connection completed while it subscribed: the state
        // decides.
        if clients.iter().all(ClientLike::is_connected) {
            Ok(servers)
        } else {
            Err(RedisError::ConnectTimeout {
                servers,
                after: self.connect_timeout,
            })
        }
    }
}

/// Closes, in the background, clients the tier no longer needs (those of a failed build):
/// those connected already, and those whose connection attempt (bounded by fred's own
/// timeouts, here `connect_timeout`) still succeeds later.
pub(crate) fn abandon(clients: &[Client], connect_timeout: std::time::Duration) {
    let wait = connect_timeout.saturating_mul(2);
    for client in clients {
        let client = client.clone();
        tokio::spawn(async move {
            if !client.is_connected() {
                let _ = tokio::time::timeout(wait, client.wait_for_connect()).await;
            }
            if client.is_connected() {
                let _ = tokio::time::timeout(wait, client.quit()).await;
            }
        });
    }
}

/// Classifies an error of the first connection: a timeout there means the server was not
/// reached in time, a connection failure.
pub(crate) fn connect_classify(err: &fred::error::Error) -> (ErrorKind, bool) {
    match classify(err) {
        (ErrorKind::Timeout, _) => (ErrorKind::Connection, true),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_described_without_credentials() {
        let config = Config::from_url("redis://user:pw@10.0.0.1:6380/2").unwrap();
        assert_eq!(describe_servers(&config.server), "10.0.0.1:6380");
        let config =
            Config::from_url("redis-cluster://u:pw@a:7000?node=b:7001&node=c:7002").unwrap();
        let described = describe_servers(&config.server);
        for host in ["a:7000", "b:7001", "c:7002"] {
            assert!(described.contains(host), "{described}");
        }
        let config = Config::from_url("redis-cluster://a:7000?node=a:7000").unwrap();
        assert_eq!(describe_servers(&config.server), "a:7000");
        assert!(!described.contains("pw"));
        let config = Config::from_url(
            "redis-sentinel://u:pw@s1:26379?sentinelServiceName=primary&node=s2:26380",
        )
        .unwrap();
        let described = describe_servers(&config.server);
        assert!(described.contains("s1:26379") && described.contains("s2:26380"));
        assert!(described.contains("\"primary\""), "{described}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_configure_tls() {
        ensure_crypto_provider();
        let config = Config::from_url("rediss://:pw@cache.example.com:6380").unwrap();
        assert!(config.uses_tls());
        let config = Config::from_url("redis://cache.example.com:6379").unwrap();
        assert!(!config.uses_tls());
    }

    #[test]
    fn sources_never_show_credentials() {
        let url = RedisSource::from("redis://user:pw-123@h:1");
        let config = RedisSource::from(Config::from_url("redis://user:pw-123@h:1").unwrap());
        for source in [url, config] {
            let shown = format!("{source:?}");
            assert!(!shown.contains("pw-123"), "{shown}");
            assert!(shown.contains("h:1"), "{shown}");
        }
    }

    #[test]
    fn defaults() {
        let builder = RedisBackendBuilder::new(RedisSource::from("redis://h"));
        assert_eq!(builder.namespace, "tierkit");
        assert_eq!(builder.command_timeout, Duration::from_secs(1));
        assert_eq!(builder.connect_timeout, Duration::from_secs(5));
        assert_eq!(builder.max_value_bytes, 16 << 20);
        assert_eq!(&*builder.label, "redis");
        assert_eq!(builder.pool_size, 1);
        // None: the default depends on the deployment, decided at build.
        assert_eq!(builder.reconnect, None);
        // None: 1 for a sentinel deployment, 0 otherwise, decided at build.
        assert_eq!(builder.replica_acks, None);
        assert_eq!(
            RedisBackend::default_reconnect_policy(),
            ReconnectPolicy::new_exponential(0, 100, 2_000, 2)
        );
        assert_eq!(
            RedisBackend::default_cluster_reconnect_policy(),
            ReconnectPolicy::new_exponential(0, 100, 300, 2)
        );
    }
}
