//! Routing by hash slot over one connection per primary: [`ClusterRouter`], for the tier's own
//! cluster connections (a `redis-cluster://` URL, or a fred `Config` naming a cluster).
//!
//! fred 10's cluster client keeps one connection state for the whole cluster: one dead primary
//! makes it reconnect as a whole, and every slot fails until that succeeds (after the
//! failover). Instead, the tier opens one *centralized* fred client per primary and routes each
//! command by its key's hash slot, so a dead primary only fails its own slots:
//!
//! * **Bootstrap**: the seeds are tried in turn until one answers `CLUSTER SLOTS`; then one
//!   client per primary is connected (all within the connect timeout).
//! * **Routing**: slot of the key → primary → its client, read from a table behind a
//!   [`RwLock`] held only to clone an [`Arc`] out (never across an `await`).
//! * **Refresh**: a transient error (a dropped connection, a timeout, `MOVED`, `ASK`,
//!   `CLUSTERDOWN`) schedules one background refresh (single-flight, at most one every
//!   [`MIN_REFRESH_INTERVAL`], bounded by the connect timeout): `CLUSTER SLOTS` from any
//!   reachable node (the seeds as a last resort), a client for each new primary, and the
//!   clients of nodes that no longer own slots closed in the background.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::error::{Error as FredError, ErrorKind as FredKind};
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::Value;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{
    Config, ConnectionConfig, Options, PerformanceConfig, ReconnectPolicy, Server, ServerConfig,
};

use crate::backend::{Link, Watchdog};
use crate::config::{abandon, connect_classify};
use crate::error::RedisError;

/// The number of hash slots of a Redis Cluster.
const SLOT_COUNT: usize = 16_384;

/// A slot no known primary serves.
const NO_NODE: u16 = u16::MAX;

/// The shortest time between the starts of two topology refreshes.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// How the tier makes the client of one node: the settings of every connection it owns.
#[derive(Clone)]
pub(crate) struct NodeSettings {
    /// The configuration of the source (credentials, TLS...), with `fail_fast` on; its server
    /// is replaced by the node's.
    pub(crate) config: Config,
    pub(crate) perf: PerformanceConfig,
    pub(crate) connection: ConnectionConfig,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl NodeSettings {
    /// A new (not connected) centralized client of `server`.
    fn client(&self, server: &Server) -> Client {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        Client::new(
            config,
            Some(self.perf.clone()),
            Some(self.connection.clone()),
            Some(self.reconnect.clone()),
        )
    }

    /// Options of the commands the router sends itself (`CLUSTER SLOTS`).
    fn options(&self, timeout: Duration) -> Options {
        Options {
            timeout: Some(timeout),
            fail_fast: true,
            ..Options::default()
        }
    }
}

/// One primary: its address and its connection.
struct Node {
    server: Server,
    link: Arc<Link>,
}

/// The routing table: which primary serves each slot.
pub(crate) struct Routing {
    /// For each slot, the index of its primary in `nodes`, or [`NO_NODE`].
    slots: Box<[u16]>,
    nodes: Vec<Node>,
}

impl Routing {
    /// The table of `topology` over `nodes` (which must hold every primary it names; slots of
    /// a primary missing from `nodes` are left unserved).
    fn new(topology: &ClusterRouting, nodes: Vec<Node>) -> Self {
        let mut slots = vec![NO_NODE; SLOT_COUNT].into_boxed_slice();
        for range in topology.slots() {
            let Some(index) = nodes
                .iter()
                .position(|node| node.server == range.primary)
                .and_then(|index| u16::try_from(index).ok())
            else {
                continue;
            };
            let (start, end) = (usize::from(range.start), usize::from(range.end));
            if let Some(owned) = slots.get_mut(start..=end.min(SLOT_COUNT - 1)) {
                owned.fill(index);
            }
        }
        Routing { slots, nodes }
    }

    fn link_for(&self, slot: u16) -> Option<&Arc<Link>> {
        let index = *self.slots.get(usize::from(slot))?;
        self.nodes.get(usize::from(index)).map(|node| &node.link)
    }

    fn node_at(&self, host: &str, port: u16) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|node| node.server.port == port && &*node.server.host == host)
    }
}

/// The state of the background refresh.
#[derive(Default)]
struct RefreshState {
    running: bool,
    last: Option<Instant>,
}

struct Shared {
    routing: RwLock<Arc<Routing>>,
    settings: NodeSettings,
    seeds: Vec<Server>,
    refresh: Mutex<RefreshState>,
    closed: AtomicBool,
}

/// Routes commands by hash slot over one client per primary, and follows the cluster's
/// topology. Clones share everything.
#[derive(Clone)]
pub(crate) struct ClusterRouter {
    shared: Arc<Shared>,
}

impl ClusterRouter {
    /// Connects to the cluster of `seeds`: the first seed that answers `CLUSTER SLOTS` gives
    /// the topology, then every primary is connected, all within the connect timeout.
    ///
    /// `servers` describes the seeds in errors.
    pub(crate) async fn connect(
        settings: NodeSettings,
        seeds: Vec<Server>,
        servers: &str,
    ) -> Result<Self, RedisError> {
        let timeout = settings.connect_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = |servers: &str| RedisError::ConnectTimeout {
            servers: servers.to_owned(),
            after: timeout,
        };
        let connect_error = |servers: &str, source: FredError| {
            let (kind, transient) = connect_classify(&source);
            RedisError::Connect {
                servers: servers.to_owned(),
                kind,
                transient,
                source,
            }
        };

        // The topology, from the first seed that gives it.
        let mut last_error = None;
        let mut found = None;
        for seed in &seeds {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let client = settings.client(seed);
            let attempt = async {
                client.init().await?;
                read_topology(&client, &settings.options(remaining), &seed.host).await
            };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(topology)) => {
                    found = Some((seed.clone(), client, topology));
                    break;
                }
                Ok(Err(err)) => {
                    abandon(std::slice::from_ref(&client), timeout);
                    // A server that is not a cluster node will not become one: say so at once.
                    if err.kind() == &FredKind::Config {
                        return Err(connect_error(servers, err));
                    }
                    last_error = Some(err);
                }
                Err(_elapsed) => abandon(std::slice::from_ref(&client), timeout),
            }
        }
        let Some((seed, seed_client, topology)) = found else {
            return Err(match last_error {
                Some(err) if Instant::now() < deadline => connect_error(servers, err),
                _ => timed_out(servers),
            });
        };

        // One connected client per primary (the seed's, when it is one).
        let primaries = topology.unique_primary_nodes();
        let mut seed_client = Some(seed_client);
        let mut clients = Vec::with_capacity(primaries.len());
        for primary in &primaries {
            if *primary == seed
                && let Some(client) = seed_client.take()
            {
                clients.push((client, true));
            } else {
                clients.push((settings.client(primary), false));
            }
        }
        let inits = clients.iter().map(|(client, connected)| async move {
            if *connected {
                Ok(())
            } else {
                client.init().await.map(drop)
            }
        });
        let remaining = deadline.saturating_duration_since(Instant::now());
        let results = tokio::time::timeout(remaining, futures_util::future::join_all(inits)).await;
        let all: Vec<Client> = clients
            .iter()
            .map(|(client, _)| client.clone())
            .chain(seed_client.clone())
            .collect();
        let failure = match results {
            Err(_elapsed) => {
                let pending: Vec<String> = primaries
                    .iter()
                    .zip(&clients)
                    .filter(|(_, (client, _))| !client.is_connected())
                    .map(|(server, _)| server.to_string())
                    .collect();
                Some(timed_out(&pending.join(", ")))
            }
            Ok(results) => primaries
                .iter()
                .zip(results)
                .find_map(|(server, result)| result.err().map(|err| (server, err)))
                .map(|(server, err)| connect_error(&format!("{server} (primary)"), err)),
        };
        if let Some(err) = failure {
            abandon(&all, timeout);
            return Err(err);
        }
        if let Some(client) = seed_client {
            abandon(std::slice::from_ref(&client), timeout);
        }
        let nodes = primaries
            .into_iter()
            .zip(clients)
            .map(|(server, (client, _))| Node {
                server,
                link: Arc::new(Link::new(client, Some(Watchdog::new()))),
            })
            .collect();
        Ok(ClusterRouter {
            shared: Arc::new(Shared {
                routing: RwLock::new(Arc::new(Routing::new(&topology, nodes))),
                settings,
                seeds,
                refresh: Mutex::new(RefreshState::default()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The current routing table.
    fn routing(&self) -> Arc<Routing> {
        self.shared.routing()
    }

    /// The connection of the primary serving `slot`, if one is known.
    pub(crate) fn link_for(&self, slot: u16) -> Option<Arc<Link>> {
        self.routing().link_for(slot).cloned()
    }

    /// The connection of the primary at `host:port`, if it is a known primary.
    pub(crate) fn link_at(&self, host: &str, port: u16) -> Option<Arc<Link>> {
        self.routing()
            .node_at(host, port)
            .map(|node| Arc::clone(&node.link))
    }

    /// The connections of the current primaries.
    pub(crate) fn links(&self) -> Vec<Arc<Link>> {
        self.routing()
            .nodes
            .iter()
            .map(|node| Arc::clone(&node.link))
            .collect()
    }

    /// Stops refreshing and returns the clients to close.
    pub(crate) fn close(&self) -> Vec<Client> {
        self.shared.closed.store(true, Ordering::Release);
        self.links()
            .into_iter()
            .map(|link| link.client.clone())
            .collect()
    }

    /// Schedules a refresh of the topology in the background: at once, or once
    /// [`MIN_REFRESH_INTERVAL`] has passed since the last one started; nothing when one is
    /// already scheduled or running, or without a tokio runtime.
    pub(crate) fn refresh_soon(&self) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let delay = {
            let mut state = self
                .shared
                .refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.running {
                return;
            }
            state.running = true;
            state.last.map_or(Duration::ZERO, |last| {
                MIN_REFRESH_INTERVAL.saturating_sub(last.elapsed())
            })
        };
        let shared = Arc::clone(&self.shared);
        drop(runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            {
                let mut state = shared
                    .refresh
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                state.last = Some(Instant::now());
            }
            let bound = shared.settings.connect_timeout;
            if tokio::time::timeout(bound, shared.refresh()).await.is_err() {
                tracing::debug!("the cluster topology refresh did not finish in time");
            }
            shared
                .refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .running = false;
        }));
    }

    /// Refreshes the topology now (tests).
    #[cfg(test)]
    async fn refresh_now(&self) -> bool {
        self.shared.refresh().await
    }

    /// The port of the primary serving `slot` in the table (tests).
    #[cfg(test)]
    fn owner_port(&self, slot: u16) -> Option<u16> {
        let routing = self.routing();
        let index = *routing.slots.get(usize::from(slot))?;
        routing
            .nodes
            .get(usize::from(index))
            .map(|node| node.server.port)
    }

    /// The index in the table of the primary at `port` (tests).
    #[cfg(test)]
    fn index_of(&self, port: u16) -> Option<u16> {
        let routing = self.routing();
        let index = routing
            .nodes
            .iter()
            .position(|node| node.server.port == port)?;
        u16::try_from(index).ok()
    }

    /// Points `slot` at the primary at index `node` (tests: a stale table).
    #[cfg(test)]
    fn misroute(&self, slot: u16, node: u16) {
        let mut guard = self
            .shared
            .routing
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let nodes = guard
            .nodes
            .iter()
            .map(|n| Node {
                server: n.server.clone(),
                link: Arc::clone(&n.link),
            })
            .collect();
        let mut slots = guard.slots.clone();
        if let Some(entry) = slots.get_mut(usize::from(slot)) {
            *entry = node;
        }
        *guard = Arc::new(Routing { slots, nodes });
    }
}

impl Shared {
    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the topology and installs the new table; whether it succeeded.
    async fn refresh(&self) -> bool {
        let current = self.routing();
        let Some((topology, asked)) = self.read_topology(&current).await else {
            tracing::debug!("no node of the cluster answered CLUSTER SLOTS");
            return false;
        };
        let primaries = topology.unique_primary_nodes();
        let unchanged = primaries.len() == current.nodes.len()
            && primaries
                .iter()
                .all(|server| current.nodes.iter().any(|node| node.server == *server))
            && same_slots(&topology, &current);
        if unchanged {
            if let Some((_, client)) = asked {
                abandon(std::slice::from_ref(&client), self.settings.connect_timeout);
            }
            return true;
        }

        // Keep the clients of nodes that are still primaries; connect the new ones.
        let mut asked = asked;
        let mut nodes = Vec::with_capacity(primaries.len());
        let mut connecting = Vec::new();
        for server in primaries {
            if let Some(node) = current.nodes.iter().find(|node| node.server == server) {
                nodes.push(Node {
                    server,
                    link: Arc::clone(&node.link),
                });
            } else if asked.as_ref().is_some_and(|(seed, _)| *seed == server)
                && let Some((_, client)) = asked.take()
            {
                nodes.push(Node {
                    server,
                    link: Arc::new(Link::new(client, Some(Watchdog::new()))),
                });
            } else {
                connecting.push(server);
            }
        }
        let connected = futures_util::future::join_all(connecting.into_iter().map(|server| {
            let client = self.settings.client(&server);
            async move {
                match client.init().await {
                    Ok(_handle) => Ok(Node {
                        server,
                        link: Arc::new(Link::new(client, Some(Watchdog::new()))),
                    }),
                    Err(err) => {
                        tracing::debug!(
                            node = %server,
                            error = %err,
                            "could not connect to a new primary of the cluster"
                        );
                        Err(())
                    }
                }
            }
        }))
        .await;
        let mut complete = true;
        for node in connected {
            match node {
                Ok(node) => nodes.push(node),
                Err(()) => complete = false,
            }
        }
        if let Some((_, client)) = asked {
            abandon(std::slice::from_ref(&client), self.settings.connect_timeout);
        }
        let routing = Arc::new(Routing::new(&topology, nodes));
        if self.closed.load(Ordering::Acquire) {
            let fresh: Vec<Client> = routing
                .nodes
                .iter()
                .filter(|node| {
                    !current
                        .nodes
                        .iter()
                        .any(|n| Arc::ptr_eq(&n.link, &node.link))
                })
                .map(|node| node.link.client.clone())
                .collect();
            quit_later(fresh, self.settings.command_timeout);
            return false;
        }
        let previous = {
            let mut guard = self.routing.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *guard, Arc::clone(&routing))
        };
        let gone: Vec<Client> = previous
            .nodes
            .iter()
            .filter(|old| {
                !routing
                    .nodes
                    .iter()
                    .any(|n| Arc::ptr_eq(&n.link, &old.link))
            })
            .map(|old| old.link.client.clone())
            .collect();
        tracing::info!(
            primaries = %routing
                .nodes
                .iter()
                .map(|node| node.server.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            closed = gone.len(),
            "the cluster's topology changed; routing updated"
        );
        quit_later(gone, self.settings.command_timeout);
        complete
    }

    /// `CLUSTER SLOTS` from a connected known node, else from any known node, else from a seed
    /// (then also returning the seed's new client, for reuse if it is a primary).
    async fn read_topology(
        &self,
        current: &Routing,
    ) -> Option<(ClusterRouting, Option<(Server, Client)>)> {
        let options = self.settings.options(self.settings.command_timeout);
        let mut known: Vec<&Node> = current.nodes.iter().collect();
        known.sort_by_key(|node| !node.link.client.is_connected());
        for node in known {
            if let Ok(topology) =
                read_topology(&node.link.client, &options, &node.server.host).await
                && topology.len() > 0
            {
                return Some((topology, None));
            }
        }
        for seed in &self.seeds {
            let client = self.settings.client(seed);
            if client.init().await.is_ok()
                && let Ok(topology) = read_topology(&client, &options, &seed.host).await
                && topology.len() > 0
            {
                return Some((topology, Some((seed.clone(), client))));
            }
            abandon(std::slice::from_ref(&client), self.settings.connect_timeout);
        }
        None
    }
}

/// Whether `topology` assigns every slot to the same primary as `current`.
fn same_slots(topology: &ClusterRouting, current: &Routing) -> bool {
    let mut covered = vec![false; SLOT_COUNT];
    for range in topology.slots() {
        for slot in range.start..=range.end {
            let index = usize::from(slot);
            let Some(node) = current.link_for(slot).and_then(|link| {
                current
                    .nodes
                    .iter()
                    .find(|node| Arc::ptr_eq(&node.link, link))
            }) else {
                return false;
            };
            if node.server != range.primary {
                return false;
            }
            if let Some(seen) = covered.get_mut(index) {
                *seen = true;
            }
        }
    }
    // A slot served in `current` but no longer in `topology` is a change too.
    covered
        .iter()
        .zip(current.slots.iter())
        .all(|(seen, node)| *seen || *node == NO_NODE)
}

/// Sends `CLUSTER SLOTS` on `client` and parses the reply (`host`: the node's address, for
/// entries that leave it out).
async fn read_topology(
    client: &Client,
    options: &Options,
    host: &str,
) -> Result<ClusterRouting, FredError> {
    let reply: Value = client.with_options(options).cluster_slots().await?;
    ClusterRouting::from_cluster_slots(reply, host)
}

/// Closes `clients` in the background, each within `timeout`.
fn quit_later(clients: Vec<Client>, timeout: Duration) {
    if clients.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for client in clients {
        drop(runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, client.quit()).await;
        }));
    }
}

/// The node a `MOVED` error names: `MOVED <slot> <host>:<port>`.
pub(crate) fn moved_to(err: &FredError) -> Option<(String, u16)> {
    let details = err.details();
    let mut words = details.split_whitespace();
    if words.next() != Some("MOVED") {
        return None;
    }
    let _slot = words.next()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::RedisBackend;
    use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
    use tierkit_services::{RedisBinaries, RedisCluster};

    #[test]
    fn moved_errors_name_the_owner() {
        let moved = FredError::new(FredKind::Cluster, "MOVED 3999 127.0.0.1:6381");
        assert_eq!(moved_to(&moved), Some(("127.0.0.1".to_owned(), 6381)));
        let ask = FredError::new(FredKind::Cluster, "ASK 3999 127.0.0.1:6381");
        assert_eq!(moved_to(&ask), None);
        let unknown = FredError::new(FredKind::Cluster, "MOVED 3999 :6381");
        assert_eq!(moved_to(&unknown), None);
        let down = FredError::new(FredKind::Cluster, "CLUSTERDOWN The cluster is down");
        assert_eq!(moved_to(&down), None);
    }

    fn value(payload: &str) -> CacheValue {
        CacheValue::with_ttl(
            payload.as_bytes().to_vec(),
            Clock::System.now(),
            Duration::from_secs(3_600),
        )
    }

    async fn tier(cluster: &RedisCluster, namespace: &str) -> RedisBackend {
        RedisBackend::builder(cluster.url())
            .namespace(namespace)
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("the tier connects")
    }

    /// The slots the router computes are those of `CLUSTER KEYSLOT` on a real node (hash tags
    /// included), and the table names the primary that serves each of them.
    #[tokio::test]
    async fn slots_and_owners_match_the_cluster() {
        let Some(binaries) = RedisBinaries::for_tests().expect("redis binaries") else {
            return;
        };
        let cluster = RedisCluster::start(&binaries, 3, 0).expect("a cluster");
        let tier = tier(&cluster, "routing").await;
        let router = tier.router().expect("routed");
        let node = cluster.node(0).expect("a node");
        let keys: [&[u8]; 12] = [
            b"foo",
            b"{user42}:profile",
            b"{user42}:settings",
            b"ns:{user1000}.following",
            b"a{b}c",
            b"{}x",
            b"{x",
            b"x}{y}",
            b"foo{}{bar}",
            b"foo{{bar}}zap",
            b"\x00\xff{\xfe}",
            b"tierkit:item:17",
        ];
        for key in keys {
            let slot = fred::util::redis_keyslot(key);
            let expected: u16 = node
                .command(&[&b"CLUSTER"[..], b"KEYSLOT", key])
                .expect("CLUSTER KEYSLOT")
                .parse()
                .expect("a slot");
            assert_eq!(slot, expected, "{key:?}");
            assert_eq!(slot, tierkit_services::key_slot(key), "{key:?}");
            let owner = cluster
                .master_for_slot(slot)
                .expect("CLUSTER NODES")
                .expect("served");
            assert_eq!(
                router.owner_port(slot),
                Some(cluster.node(owner).expect("owner").port()),
                "{key:?}"
            );
        }
    }

    /// A slot moved by hand (`CLUSTER SETSLOT ... NODE`) after the tier was built: the first
    /// command gets `MOVED` from the old owner, follows it to the new one and succeeds; the
    /// refresh then routes the slot to the new owner. A table pointing a slot at the wrong
    /// primary is corrected the same way.
    #[tokio::test]
    async fn moved_replies_are_followed() {
        let Some(binaries) = RedisBinaries::for_tests().expect("redis binaries") else {
            return;
        };
        let cluster = RedisCluster::start(&binaries, 3, 0).expect("a cluster");
        let tier = tier(&cluster, "moved").await;
        let router = tier.router().expect("routed").clone();
        let masters = cluster.masters().expect("ROLE");

        let key = CacheKey::new("moving").expect("a key");
        let redis_key = tier.redis_key(&key);
        let slot = fred::util::redis_keyslot(&redis_key);
        let from = cluster
            .master_for_slot(slot)
            .expect("NODES")
            .expect("served");
        let to = *masters
            .iter()
            .find(|m| **m != from)
            .expect("another master");
        let id = |index: usize| {
            cluster
                .node(index)
                .expect("node")
                .command(&["CLUSTER", "MYID"])
                .expect("MYID")
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot_text = slot.to_string();
        let node = |index: usize| cluster.node(index).expect("node");
        node(to)
            .command(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id])
            .expect("IMPORTING");
        node(from)
            .command(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id])
            .expect("MIGRATING");
        for master in &masters {
            node(*master)
                .command(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id])
                .expect("SETSLOT NODE");
        }
        assert_eq!(router.owner_port(slot), Some(node(from).port()), "stale");

        let moved = value("moved");
        tier.set(&key, moved.clone())
            .await
            .expect("MOVED is followed");
        let exists = node(to)
            .command(&[&b"EXISTS"[..], &redis_key[..]])
            .expect("EXISTS");
        assert_eq!(exists, "1", "written on the new owner");
        assert_eq!(tier.get(&key).await.expect("get"), Some(moved));
        let started = Instant::now();
        while router.owner_port(slot) != Some(node(to).port()) {
            assert!(started.elapsed() < Duration::from_secs(3), "no refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A stale table: the slot of another key pointed at a primary that does not own it.
        let other = CacheKey::new("misrouted").expect("a key");
        let other_slot = fred::util::redis_keyslot(&tier.redis_key(&other));
        let owner = cluster
            .master_for_slot(other_slot)
            .expect("NODES")
            .expect("served");
        let wrong = *masters
            .iter()
            .find(|m| **m != owner)
            .expect("another master");
        router.misroute(
            other_slot,
            router.index_of(node(wrong).port()).expect("known"),
        );
        assert_eq!(router.owner_port(other_slot), Some(node(wrong).port()));
        let misrouted = value("misrouted");
        tier.set(&other, misrouted.clone())
            .await
            .expect("MOVED is followed");
        assert_eq!(tier.get(&other).await.expect("get"), Some(misrouted));
        // The refresh repairs the table.
        assert!(router.refresh_now().await);
        assert_eq!(router.owner_port(other_slot), Some(node(owner).port()));
        tier.clear().await.expect("clear");
        assert_eq!(tier.get(&key).await.expect("get"), None);
        tier.shutdown().await;
    }
}
