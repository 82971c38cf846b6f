//! [`RedisSentinel`]: a private primary, its replica, and one Redis Sentinel watching them.

use std::time::{Duration, Instant};

use crate::binaries::RedisBinaries;
use crate::cluster::{info_field, role};
use crate::error::ServiceError;
use crate::resp::Reply;
use crate::server::{RedisServer, RedisServerOptions};

/// The service name the sentinel monitors the primary under.
pub const SENTINEL_SERVICE_NAME: &str = "mymaster";

/// How long the primary may be unreachable before the sentinel calls it down
/// (`down-after-milliseconds`; Redis' default is 30 s).
pub const SENTINEL_DOWN_AFTER_MS: u32 = 1000;

/// The failover timeout (`failover-timeout`; Redis' default is 3 minutes): also the least time
/// between two failovers of the service, twice this.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u32 = 2000;

/// How long [`RedisSentinel::start`] waits for the deployment to settle.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A private sentinel deployment on 127.0.0.1: a primary, a replica of it, and one Redis
/// Sentinel (`redis-server sentinel.conf --sentinel`, from the same binary) that monitors the
/// primary as [`SENTINEL_SERVICE_NAME`] with a quorum of 1 and short timeouts
/// ([`SENTINEL_DOWN_AFTER_MS`], [`SENTINEL_FAILOVER_TIMEOUT_MS`]), so that a failover takes
/// a second or two. Dropping it kills the three processes.
///
/// ```no_run
/// use std::time::Duration;
/// use tierkit_services::{RedisBinaries, RedisSentinel};
///
/// # fn main() -> Result<(), tierkit_services::ServiceError> {
/// let binaries = RedisBinaries::locate()?;
/// let deployment = RedisSentinel::start(&binaries)?;
/// // redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster
/// println!("connect to {}", deployment.url());
/// assert_eq!(deployment.primary()?, 0);
/// deployment.failover()?; // SENTINEL FAILOVER mymaster: the replica is promoted
/// deployment.wait_until_settled(Duration::from_secs(30))?;
/// assert_eq!(deployment.primary()?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data servers: the first primary, then its replica.
    servers: Vec<RedisServer>,
    /// The sentinel.
    sentinel: RedisServer,
}

impl RedisSentinel {
    /// Starts the primary, its replica and the sentinel, and waits (up to 20 seconds) until
    /// they are settled (see [`RedisSentinel::wait_until_settled`]): from then on,
    /// [`RedisSentinel::failover`] can promote the replica.
    ///
    /// # Errors
    ///
    /// The errors of [`RedisServer::start`], and [`ServiceError::SentinelTimeout`]. On error
    /// every process started is stopped.
    pub fn start(binaries: &RedisBinaries) -> Result<Self, ServiceError> {
        let primary = RedisServer::start(binaries, RedisServerOptions::new())?;
        let replica_options = RedisServerOptions::new().args([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port().to_string(),
        ]);
        let replica = RedisServer::start(binaries, replica_options)?;
        let config = format!(
            "sentinel monitor {SENTINEL_SERVICE_NAME} 127.0.0.1 {port} 1\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE_NAME} {SENTINEL_DOWN_AFTER_MS}\n\
             sentinel failover-timeout {SENTINEL_SERVICE_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n",
            port = primary.port()
        );
        let sentinel = RedisServer::start(binaries, RedisServerOptions::new().sentinel(config))?;
        let deployment = Self {
            servers: vec![primary, replica],
            sentinel,
        };
        deployment.wait_until_settled(READY_TIMEOUT)?;
        Ok(deployment)
    }

    /// The URL of the deployment in fred's form, naming the sentinel:
    /// `redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster`.
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE_NAME}",
            self.sentinel.port()
        )
    }

    /// The sentinel process.
    #[must_use]
    pub fn sentinel(&self) -> &RedisServer {
        &self.sentinel
    }

    /// The data servers: index 0 was the primary at start, index 1 its replica.
    #[must_use]
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The index in [`RedisSentinel::servers`] of the server the sentinel names as the
    /// primary now (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Errors
    ///
    /// [`ServiceError::Protocol`] when the sentinel names no server of the deployment, else
    /// the errors of [`RedisServer::query`].
    pub fn primary(&self) -> Result<usize, ServiceError> {
        let reply =
            self.sentinel
                .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE_NAME])?;
        let port = match &reply {
            Reply::Array(items) => items.get(1).map(Reply::to_text),
            _ => None,
        };
        port.and_then(|port| port.parse::<u16>().ok())
            .and_then(|port| self.servers.iter().position(|server| server.port() == port))
            .ok_or_else(|| ServiceError::Protocol {
                addr: self.sentinel.addr(),
                detail: format!("the sentinel names no server of the deployment: {reply:?}"),
            })
    }

    /// Asks the sentinel for a failover (`SENTINEL FAILOVER mymaster`), with the primary
    /// alive: the sentinel promotes the replica, announces `+switch-master`, then turns the
    /// old primary into a replica of the new one. Returns at once; the failover takes a
    /// second or two ([`RedisSentinel::wait_until_settled`] waits for its end).
    ///
    /// # Errors
    ///
    /// As [`RedisServer::command`]: for instance `NOGOODSLAVE` while the sentinel knows no
    /// healthy replica, or `INPROG` during another failover.
    pub fn failover(&self) -> Result<(), ServiceError> {
        self.sentinel
            .command(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE_NAME])
            .map(drop)
    }

    /// Waits until the deployment is settled: the server the sentinel names as primary says
    /// it is one (`ROLE`), every other running server is its replica with the link up and
    /// has acknowledged a replication offset (so `WAIT` counts it), the sentinel
    /// knows those replicas and sees them healthy, and no failover is in progress.
    ///
    /// After a failover, the sentinel turns the old primary into a replica only once it reads
    /// the old primary's role again (it asks every 10 seconds), then waits 8 seconds more: the
    /// deployment settles 10 to 20 seconds after the promotion.
    ///
    /// # Errors
    ///
    /// [`ServiceError::SentinelTimeout`], naming what was still wrong.
    pub fn wait_until_settled(&self, timeout: Duration) -> Result<(), ServiceError> {
        let started = Instant::now();
        loop {
            let problem = match self.settle_problem() {
                Ok(None) => return Ok(()),
                Ok(Some(problem)) => problem,
                Err(err) => err.to_string(),
            };
            if started.elapsed() > timeout {
                return Err(ServiceError::SentinelTimeout {
                    waited_for: "settled".to_owned(),
                    waited: started.elapsed(),
                    problem,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What keeps the deployment from being settled, or `None` when it is.
    fn settle_problem(&self) -> Result<Option<String>, ServiceError> {
        let primary_index = self.primary()?;
        let Some(primary) = self.servers.get(primary_index) else {
            return Ok(Some(format!("no server {primary_index}")));
        };
        let master = sentinel_fields(&self.sentinel.query(&[
            "SENTINEL",
            "MASTER",
            SENTINEL_SERVICE_NAME,
        ])?);
        let flags = field(&master, "flags");
        if flags != "master" {
            return Ok(Some(format!("the sentinel flags the primary {flags:?}")));
        }
        if role(primary)? != "master" {
            return Ok(Some(format!(
                "{} is named primary but is not a master yet",
                primary.addr()
            )));
        }
        let primary_replication = primary.command(&["INFO", "replication"])?;
        let known = self
            .sentinel
            .query(&["SENTINEL", "REPLICAS", SENTINEL_SERVICE_NAME])?;
        let known: Vec<Vec<(String, String)>> = match known {
            Reply::Array(items) => items.iter().map(sentinel_fields).collect(),
            _ => Vec::new(),
        };
        for (index, server) in self.servers.iter().enumerate() {
            if index == primary_index || !server.is_running() {
                continue;
            }
            if role(server)? != "slave" {
                return Ok(Some(format!("{} is not a replica yet", server.addr())));
            }
            let replication = server.command(&["INFO", "replication"])?;
            let master_port = info_field(&replication, "master_port").unwrap_or("");
            let link = info_field(&replication, "master_link_status").unwrap_or("(missing)");
            if master_port != primary.port().to_string() || link != "up" {
                return Ok(Some(format!(
                    "{} replicates port {master_port} with the link {link}, not {}",
                    server.addr(),
                    primary.port()
                )));
            }
            let port = server.port().to_string();
            // The primary counts a replica in `WAIT` once the replica acknowledged an offset,
            // up to a second after the link is up (the offset reads 0 until then).
            let acked = primary_replication.lines().any(|line| {
                let fields: Vec<&str> = line.split([':', ',']).collect();
                fields.contains(&format!("port={port}").as_str())
                    && fields.contains(&"state=online")
                    && fields.iter().any(|field| {
                        field
                            .strip_prefix("offset=")
                            .and_then(|offset| offset.parse::<u64>().ok())
                            .is_some_and(|offset| offset > 0)
                    })
            });
            if !acked {
                return Ok(Some(format!(
                    "the primary has no acknowledgement from {} yet",
                    server.addr()
                )));
            }
            let seen = known.iter().find(|fields| field(fields, "port") == port);
            let healthy = seen.is_some_and(|fields| {
                field(fields, "flags") == "slave"
                    && field(fields, "master-link-status") == "ok"
                    && field(fields, "master-port") == primary.port().to_string()
            });
            if !healthy {
                return Ok(Some(format!(
                    "the sentinel does not see {} as a healthy replica yet ({seen:?})",
                    server.addr()
                )));
            }
        }
        Ok(None)
    }
}

/// The field-value pairs of a `SENTINEL MASTER` or `SENTINEL REPLICAS` entry.
fn sentinel_fields(reply: &Reply) -> Vec<(String, String)> {
    let Reply::Array(items) = reply else {
        return Vec::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((name.to_text(), value.to_text())),
            _ => None,
        })
        .collect()
}

/// The value of `name` among `fields`, or the empty string.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map_or("", |(_, value)| value.as_str())
}
