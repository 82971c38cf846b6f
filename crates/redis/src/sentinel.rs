//! Moving to a new primary as soon as the sentinels announce a failover.
//!
//! fred asks the sentinels for the primary only when it connects. After a failover, the old
//! primary, if it still runs, keeps its clients until the sentinels demote it, 10 to 20 seconds
//! later: meanwhile every write to it fails (it is not confirmed by a replica any more, see
//! [`crate::replication`]) and reads return what it held at the promotion.
//!
//! So the tier subscribes to `+switch-master` on each sentinel of its configuration (one small
//! fred client per sentinel, resubscribing after each reconnection). When one announces a new
//! address for the tier's service, each of the tier's clients that is not connected there is
//! reconnected, which asks the sentinels again; a client that lands elsewhere (asking a
//! sentinel that has not heard of the failover yet) is reconnected again, every 100 ms, within
//! the connect timeout. Every sentinel announces the switch when it learns of it, so a client
//! that could not move is moved by a later announcement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use fred::types::config::{Config, ConnectionConfig, ReconnectPolicy, Server, ServerConfig};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// The channel on which a sentinel announces a new primary:
/// `<service> <old ip> <old port> <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// How long a client that asked a sentinel not yet aware of the switch waits before asking
/// again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The subscriptions to the sentinels' announcements, and the tasks that act on them.
pub(crate) struct SentinelWatch {
    /// One client per sentinel, subscribed to `+switch-master`.
    subscribers: Vec<Client>,
    /// One task per subscriber.
    tasks: Vec<JoinHandle<()>>,
}

/// What a watch needs to move the tier's clients.
struct Mover {
    /// The tier's clients.
    clients: Vec<Client>,
    /// The service the tier's primary is monitored as.
    service: String,
    /// The bound of one move.
    connect_timeout: Duration,
    /// One move at a time: several sentinels announce the same switch.
    moving: tokio::sync::Mutex<()>,
}

impl SentinelWatch {
    /// Subscribes to `+switch-master` on every sentinel of `config` (a sentinel
    /// configuration; `None` otherwise), to move `clients` to each primary announced for the
    /// service. The subscribers connect in the background with `reconnect`, and use `config`'s
    /// credentials and TLS settings, as fred does to ask the sentinels for the primary.
    pub(crate) fn start(
        config: &Config,
        reconnect: &ReconnectPolicy,
        clients: Vec<Client>,
        connect_timeout: Duration,
    ) -> Option<Self> {
        let ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } = &config.server
        else {
            return None;
        };
        let mover = Arc::new(Mover {
            clients,
            service: service_name.clone(),
            connect_timeout,
            moving: tokio::sync::Mutex::new(()),
        });
        let connection = ConnectionConfig {
            connection_timeout: connect_timeout,
            internal_command_timeout: connect_timeout,
            ..ConnectionConfig::default()
        };
        let mut subscribers = Vec::with_capacity(hosts.len());
        let mut tasks = Vec::with_capacity(hosts.len());
        for host in hosts {
            let sentinel = Config {
                server: ServerConfig::Centralized {
                    server: host.clone(),
                },
                // A sentinel has no databases; keep retrying a sentinel that is down.
                database: None,
                fail_fast: false,
                ..config.clone()
            };
            let subscriber = Client::new(
                sentinel,
                None,
                Some(connection.clone()),
                Some(reconnect.clone()),
            );
            tasks.push(tokio::spawn(watch(subscriber.clone(), Arc::clone(&mover))));
            subscribers.push(subscriber);
        }
        Some(SentinelWatch { subscribers, tasks })
    }

    /// Stops acting on announcements, and returns the subscribers to close.
    pub(crate) fn close(&self) -> Vec<Client> {
        for task in &self.tasks {
            task.abort();
        }
        self.subscribers.clone()
    }
}

impl Drop for SentinelWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connects `subscriber`, subscribes to `+switch-master` after each (re)connection, and moves
/// the tier at each announcement for its service.
async fn watch(subscriber: Client, mover: Arc<Mover>) {
    let mut reconnections = subscriber.reconnect_rx();
    let mut messages = subscriber.message_rx();
    // The handle is not needed: `quit` ends the connection task.
    drop(subscriber.connect());
    loop {
        tokio::select! {
            reconnected = reconnections.recv() => match reconnected {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let subscribed = tokio::time::timeout(
                        mover.connect_timeout,
                        subscriber.subscribe(SWITCH_MASTER),
                    )
                    .await;
                    if !matches!(subscribed, Ok(Ok(()))) {
                        tracing::warn!(
                            sentinel = %describe(&subscriber),
                            "could not subscribe to the sentinel's failover announcements"
                        );
                    }
                }
                Err(RecvError::Closed) => return,
            },
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(primary) = announced(&message, &mover.service) {
                        mover.move_to(&primary).await;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The sentinel a subscriber talks to, as `host:port`.
fn describe(subscriber: &Client) -> String {
    crate::config::describe_servers(&subscriber.client_config().server)
}

/// The new primary of `service` that `message` announces, if it is such an announcement:
/// `<service> <old ip> <old port> <new ip> <new port>` on `+switch-master`.
fn announced(message: &Message, service: &str) -> Option<Server> {
    if message.channel != SWITCH_MASTER {
        return None;
    }
    let text = message.value.as_str()?;
    let mut words = text.split_whitespace();
    let (Some(name), Some(_), Some(_), Some(host), Some(port), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return None;
    };
    if name != service {
        return None;
    }
    Some(Server::new(host, port.parse::<u16>().ok()?))
}

impl Mover {
    /// Reconnects each client that is not connected to `primary`, until it is, within the
    /// connect timeout.
    async fn move_to(&self, primary: &Server) {
        let _one_at_a_time = self.moving.lock().await;
        let deadline = Instant::now() + self.connect_timeout;
        let mut moved = 0_usize;
        for client in &self.clients {
            loop {
                if is_connected_to(client, primary) {
                    moved += 1;
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = tokio::time::timeout(left, client.force_reconnection()).await;
                if !is_connected_to(client, primary) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(RETRY_EVERY.min(left)).await;
                }
            }
        }
        if moved == self.clients.len() {
            tracing::info!(
                service = %self.service,
                primary = %primary,
                "the sentinels announced a new primary; the tier moved to it"
            );
        } else {
            tracing::warn!(
                service = %self.service,
                primary = %primary,
                moved,
                clients = self.clients.len(),
                "the sentinels announced a new primary; not every client could move to it \
                 within the connect timeout"
            );
        }
    }
}

/// Whether `client` is connected to `server` now.
fn is_connected_to(client: &Client, server: &Server) -> bool {
    client.is_connected()
        && client
            .active_connections()
            .iter()
            .any(|active| active.host == server.host && active.port == server.port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::{MessageKind, Value};

    fn message(channel: &str, text: &str) -> Message {
        Message {
            channel: channel.into(),
            value: Value::from(text),
            kind: MessageKind::Message,
            server: Server::new("127.0.0.1", 26379),
        }
    }

    #[test]
    fn announcements_name_the_new_primary_of_the_service() {
        let switch = message("+switch-master", "cache 10.0.0.1 6379 10.0.0.2 6380");
        assert_eq!(
            announced(&switch, "cache"),
            Some(Server::new("10.0.0.2", 6380))
        );
        assert_eq!(announced(&switch, "other"), None);
        for (channel, text) in [
            ("+sdown", "cache 10.0.0.1 6379 10.0.0.2 6380"),
            ("+switch-master", "cache 10.0.0.1 6379 10.0.0.2"),
            ("+switch-master", "cache 10.0.0.1 6379 10.0.0.2 6380 extra"),
            ("+switch-master", "cache 10.0.0.1 6379 10.0.0.2 port"),
            ("+switch-master", ""),
        ] {
            assert_eq!(announced(&message(channel, text), "cache"), None, "{text}");
        }
    }
}
