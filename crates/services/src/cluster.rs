//! [`RedisCluster`]: a private Redis Cluster of child processes, and the key-to-slot function.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::RedisBinaries;
use crate::error::ServiceError;
use crate::resp::Reply;
use crate::server::{RedisServer, RedisServerOptions};

/// The number of hash slots of a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// How long [`RedisCluster::start`] waits for the cluster to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The fewest masters `redis-cli --cluster create` accepts.
const MIN_MASTERS: usize = 3;

/// The most nodes a cluster of this crate may have (a guard against a mistyped size).
const MAX_NODES: usize = 64;

/// The hash slot of `key` (CRC16/XMODEM modulo 16384), following Redis's hash-tag rule: when
/// the key contains `{`, and a `}` after it with at least one byte in between, only the bytes
/// between the first `{` and the first `}` after it are hashed.
#[must_use]
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|byte| *byte == b'{')
        .and_then(|open| {
            let rest = key.get(open + 1..)?;
            let len = rest.iter().position(|byte| *byte == b'}')?;
            rest.get(..len).filter(|tag| !tag.is_empty())
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOT_COUNT
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes keys
/// with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// A private Redis Cluster: `masters * (1 + replicas_per_master)` cluster-mode
/// [`RedisServer`]s on 127.0.0.1, joined with `redis-cli --cluster create`. Dropping it kills
/// every node.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, in the order given to `redis-cli --cluster create`.
    nodes: Vec<RedisServer>,
    /// Indices of the masters once the cluster was healthy.
    initial_masters: Vec<usize>,
    /// The replicas of each master.
    replicas_per_master: usize,
}

impl RedisCluster {
    /// Starts a cluster of `masters` masters (at least 3), each with `replicas_per_master`
    /// replicas, and waits (up to 20 seconds) until every node reports `cluster_state:ok`
    /// with all 16384 slots assigned and every replica's link to its master is up.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidArgument`] for fewer than 3 masters or more than 64 nodes, the
    /// errors of [`RedisServer::start`], [`ServiceError::ClusterCreate`] when `redis-cli`
    /// fails, and [`ServiceError::ClusterTimeout`]. On error every node started is stopped.
    pub fn start(
        binaries: &RedisBinaries,
        masters: usize,
        replicas_per_master: usize,
    ) -> Result<Self, ServiceError> {
        Self::start_with(
            binaries,
            masters,
            replicas_per_master,
            RedisServerOptions::new(),
        )
    }

    /// As [`RedisCluster::start`], with `options` for every node (cluster mode is turned on).
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::start`].
    pub fn start_with(
        binaries: &RedisBinaries,
        masters: usize,
        replicas_per_master: usize,
        options: RedisServerOptions,
    ) -> Result<Self, ServiceError> {
        let total = masters.saturating_mul(replicas_per_master.saturating_add(1));
        if masters < MIN_MASTERS || total > MAX_NODES {
            return Err(ServiceError::InvalidArgument {
                detail: format!(
                    "a cluster of {masters} masters with {replicas_per_master} replicas each: \
                     redis-cli needs at least {MIN_MASTERS} masters, and this crate starts at \
                     most {MAX_NODES} nodes"
                ),
            });
        }
        let options = options.cluster(true);
        let nodes = start_nodes(binaries, total, &options)?;
        let mut cluster = Self {
            nodes,
            initial_masters: Vec::new(),
            replicas_per_master,
        };
        cluster.create(binaries)?;
        if let Err(ServiceError::ClusterTimeout { waited, problem }) =
            cluster.wait_until_healthy(READY_TIMEOUT)
        {
            // The nodes' directories go with them: quote their logs now.
            let mut problem = format!("{problem}; the nodes were stopped");
            for (index, node) in cluster.nodes.iter().enumerate() {
                problem.push_str(&format!(
                    "\nnode {index} ({}) log ends with:\n{}",
                    node.addr(),
                    node.log_tail(5)
                ));
            }
            return Err(ServiceError::ClusterTimeout { waited, problem });
        }
        cluster.initial_masters = cluster.masters()?;
        Ok(cluster)
    }

    /// The URL of the cluster in fred's form, naming the masters it started with:
    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`.
    #[must_use]
    pub fn url(&self) -> String {
        let mut addrs = self
            .initial_masters
            .iter()
            .filter_map(|index| self.nodes.get(*index))
            .map(|node| format!("127.0.0.1:{}", node.port()));
        let mut url = format!("redis-cluster://{}", addrs.next().unwrap_or_default());
        for (position, addr) in addrs.enumerate() {
            url.push(if position == 0 { '?' } else { '&' });
            url.push_str("node=");
            url.push_str(&addr);
        }
        url
    }

    /// Every node, masters and replicas, in creation order.
    #[must_use]
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `index`.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidArgument`] when there is no such node.
    pub fn node(&self, index: usize) -> Result<&RedisServer, ServiceError> {
        self.nodes
            .get(index)
            .ok_or_else(|| ServiceError::InvalidArgument {
                detail: format!(
                    "node index {index}: the cluster has {} nodes, numbered from 0",
                    self.nodes.len()
                ),
            })
    }

    /// Indices of the running nodes that are masters now, according to `ROLE` (after a
    /// failover this includes promoted replicas).
    ///
    /// # Errors
    ///
    /// The errors of [`RedisServer::query`].
    pub fn masters(&self) -> Result<Vec<usize>, ServiceError> {
        let mut masters = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.is_running() && role(node)? == "master" {
                masters.push(index);
            }
        }
        Ok(masters)
    }

    /// Stops node `index` (`SIGKILL`, like a crash). [`RedisCluster::restart_node`] starts it
    /// again.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidArgument`] for a bad index, else as [`RedisServer::stop`].
    pub fn kill_node(&self, index: usize) -> Result<(), ServiceError> {
        self.node(index)?.stop()
    }

    /// Restarts node `index` on the same port; it rejoins the cluster with its identity.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidArgument`] for a bad index, else as [`RedisServer::restart`].
    pub fn restart_node(&self, index: usize) -> Result<(), ServiceError> {
        self.node(index)?.restart()
    }

    /// The hash slot of `key`; see [`key_slot`].
    #[must_use]
    pub fn slot_of(key: &[u8]) -> u16 {
        key_slot(key)
    }

    /// The index of the node that serves `slot`, according to `CLUSTER NODES` of the first
    /// running node, or `None` if no node serves it (or `slot` is not below 16384).
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotRunning`] when no node runs, else the errors of
    /// [`RedisServer::command`].
    pub fn master_for_slot(&self, slot: u16) -> Result<Option<usize>, ServiceError> {
        let Some(asked) = self.nodes.iter().find(|node| node.is_running()) else {
            return Err(ServiceError::NotRunning {
                port: self.nodes.first().map_or(0, RedisServer::port),
            });
        };
        let nodes = asked.command(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields.get(1).and_then(|addr| node_port(addr)) else {
                continue;
            };
            let serves = fields
                .iter()
                .skip(8)
                .any(|range| slot_range_contains(range, slot));
            if serves {
                return Ok(self.nodes.iter().position(|node| node.port() == port));
            }
        }
        Ok(None)
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// assigned and knows every node, and every running replica's link to its master is up.
    /// Use it after [`RedisCluster::kill_node`] (with replicas, a failover takes a few
    /// seconds: the node timeout is 2 seconds) or [`RedisCluster::restart_node`].
    ///
    /// # Errors
    ///
    /// [`ServiceError::ClusterTimeout`], naming what was still wrong.
    pub fn wait_until_healthy(&self, timeout: Duration) -> Result<(), ServiceError> {
        let started = Instant::now();
        loop {
            let problem = match self.health_problem() {
                Ok(None) => return Ok(()),
                Ok(Some(problem)) => problem,
                Err(err) => err.to_string(),
            };
            if started.elapsed() > timeout {
                return Err(ServiceError::ClusterTimeout {
                    waited: started.elapsed(),
                    problem,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The replicas per master the cluster was created with.
    #[must_use]
    pub fn replicas_per_master(&self) -> usize {
        self.replicas_per_master
    }

    /// Runs `redis-cli --cluster create` over every node.
    fn create(&self, binaries: &RedisBinaries) -> Result<(), ServiceError> {
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(
            self.nodes
                .iter()
                .map(|node| format!("127.0.0.1:{}", node.port())),
        );
        args.extend([
            "--cluster-replicas".to_owned(),
            self.replicas_per_master.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let command_text = format!("{} {}", binaries.cli().display(), args.join(" "));
        let output = Command::new(binaries.cli())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| ServiceError::io(format!("running `{command_text}`"), err))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() && text.contains("All 16384 slots covered") {
            return Ok(());
        }
        Err(ServiceError::ClusterCreate {
            command: command_text,
            status: output.status.to_string(),
            output: text,
        })
    }

    /// What keeps the cluster from being healthy, or `None` when it is.
    fn health_problem(&self) -> Result<Option<String>, ServiceError> {
        let total = self.nodes.len().to_string();
        let expected: [(&str, &str); 3] = [
            ("cluster_state", "ok"),
            ("cluster_slots_assigned", "16384"),
            ("cluster_known_nodes", &total),
        ];
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let info = node.command(&["CLUSTER", "INFO"])?;
            for (field, value) in expected {
                let actual = info_field(&info, field).unwrap_or("(missing)");
                if actual != value {
                    return Ok(Some(format!(
                        "node {index} ({}) reports {field}:{actual}, not {value}",
                        node.addr()
                    )));
                }
            }
            if role(node)? == "slave" {
                let replication = node.command(&["INFO", "replication"])?;
                let link = info_field(&replication, "master_link_status").unwrap_or("(missing)");
                if link != "up" {
                    return Ok(Some(format!(
                        "replica node {index} ({}) reports master_link_status:{link}",
                        node.addr()
                    )));
                }
            }
        }
        Ok(None)
    }
}

/// Starts `count` servers with `options`, in parallel; stops them all if one fails.
fn start_nodes(
    binaries: &RedisBinaries,
    count: usize,
    options: &RedisServerOptions,
) -> Result<Vec<RedisServer>, ServiceError> {
    let results: Vec<Result<RedisServer, ServiceError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| scope.spawn(|| RedisServer::start(binaries, options.clone())))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(ServiceError::InvalidArgument {
                        detail: "a thread starting a cluster node panicked".to_owned(),
                    })
                })
            })
            .collect()
    });
    // Collecting into a Result drops (so stops) the servers already started on error.
    results.into_iter().collect()
}

/// The first element of the `ROLE` reply of `node`: `master`, `slave` or `sentinel`.
pub(crate) fn role(node: &RedisServer) -> Result<String, ServiceError> {
    match node.query(&["ROLE"])? {
        Reply::Array(items) => Ok(items.first().map(Reply::to_text).unwrap_or_default()),
        other => Err(ServiceError::Protocol {
            addr: node.addr(),
            detail: format!("ROLE answered {other:?}, not an array"),
        }),
    }
}

/// The value of `field` in an `INFO`-style `field:value` text.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The client port in a `CLUSTER NODES` address: `127.0.0.1:7000@17000[,hostname]`.
fn node_port(addr: &str) -> Option<u16> {
    let host_port = addr.split(['@', ',']).next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// Whether a `CLUSTER NODES` slot field (`5461`, `0-5460`; `[...]` migration marks never
/// match) contains `slot`.
fn slot_range_contains(range: &str, slot: u16) -> bool {
    if range.starts_with('[') {
        return false;
    }
    let (start, end) = range.split_once('-').unwrap_or((range, range));
    match (start.parse::<u16>(), end.parse::<u16>()) {
        (Ok(start), Ok(end)) => (start..=end).contains(&slot),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{crc16_xmodem, info_field, key_slot, node_port, slot_range_contains};

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn slots_follow_the_hash_tag_rule() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{"), key_slot(b"{"));
        assert!(key_slot(&[0xff; 100]) < 16384);
    }

    #[test]
    fn reads_cluster_nodes_fields() {
        assert_eq!(node_port("127.0.0.1:7000@17000"), Some(7000));
        assert_eq!(node_port("127.0.0.1:7001@17001,host"), Some(7001));
        assert_eq!(node_port(":0@0"), Some(0));
        assert!(slot_range_contains("0-5460", 0));
        assert!(slot_range_contains("0-5460", 5460));
        assert!(!slot_range_contains("0-5460", 5461));
        assert!(slot_range_contains("5461", 5461));
        assert!(!slot_range_contains("[5461->-abc]", 5461));
        assert_eq!(
            info_field("a:1\r\ncluster_state:ok\r\n", "cluster_state"),
            Some("ok")
        );
        assert_eq!(info_field("cluster_state_x:1\r\n", "cluster_state"), None);
    }
}
