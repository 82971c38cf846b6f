//! Writes confirmed by replicas: with [`replica_acks`](crate::RedisBackendBuilder::replica_acks)
//! above zero, every write is followed, in the same round trip, by `WAIT replicas timeout`,
//! and is acknowledged only when Redis answers that enough replicas hold it.
//!
//! Redis replicates asynchronously: a primary answers `OK` before its replicas have the write.
//! When a sentinel promotes the replica, the old primary keeps running and keeps answering `OK`
//! until the sentinel demotes it, seconds later; it then replaces its whole dataset with a copy
//! of the new primary, and every write it took meanwhile is gone. A promoted replica no longer
//! acknowledges anything to its old primary, so `WAIT` tells the tier at once that a write was
//! not replicated: the write fails (a transient error) instead of being acknowledged and lost.

use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pipeline, WithOptions};
use fred::error::{Error as FredError, ErrorKind as FredKind};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{ClusterHash, CustomCommand, Expiration, Key, Value};

/// A write of the tier: one command on one primary.
pub(crate) enum Write {
    /// `SET key bytes [PXAT expires_at]`.
    Set {
        key: Bytes,
        bytes: Bytes,
        expiry: Option<Expiration>,
    },
    /// `UNLINK key...`.
    Unlink(Vec<Key>),
}

/// How many replicas must confirm each write, and how long the primary waits for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confirmation {
    /// The replicas that must hold a write before it is acknowledged; 0: none, no `WAIT`.
    replicas: u32,
    /// The `WAIT` timeout: half the command timeout, so that the primary's answer (how many
    /// replicas confirmed) comes back well within the command timeout.
    wait: Duration,
}

impl Confirmation {
    pub(crate) fn new(replicas: u32, command_timeout: Duration) -> Self {
        Confirmation {
            replicas,
            wait: (command_timeout / 2).max(Duration::from_millis(1)),
        }
    }

    /// The replicas that must hold a write before it is acknowledged.
    pub(crate) fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Sends `write` through `client`: alone without confirmation, else pipelined with `WAIT`
    /// in one round trip. A write that fewer replicas than required confirmed fails with
    /// Redis' own `NOREPLICAS` error (a transient connection error of the tier): it is on the
    /// primary, and may be lost with it.
    pub(crate) async fn send(
        &self,
        client: WithOptions<Client>,
        write: Write,
    ) -> Result<(), FredError> {
        if self.replicas == 0 {
            return match write {
                Write::Set { key, bytes, expiry } => {
                    client
                        .set::<(), _, _>(key, bytes, expiry, None, false)
                        .await
                }
                Write::Unlink(keys) => client.unlink::<(), _>(keys).await,
            };
        }
        let pipeline = Pipeline::from(client);
        // Queuing only buffers the commands; `try_all` sends them together.
        match write {
            Write::Set { key, bytes, expiry } => {
                pipeline
                    .set::<(), _, _>(key, bytes, expiry, None, false)
                    .await?;
            }
            Write::Unlink(keys) => pipeline.unlink::<(), _>(keys).await?,
        }
        let (wait, arguments) = self.wait_command();
        pipeline.custom::<(), _>(wait, arguments).await?;
        // One reply per command, or a single error when the pipeline itself failed (not sent,
        // connection lost, timed out).
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        let confirmed = match (replies.next(), replies.next(), replies.next()) {
            (Some(Err(err)), _, _) => return Err(err),
            (Some(Ok(_)), Some(confirmed), None) => confirmed?,
            _ => {
                return Err(FredError::new(
                    FredKind::Protocol,
                    "a write and its WAIT did not get one reply each",
                ));
            }
        };
        self.check(&confirmed)
    }

    /// Confirms, with a `WAIT` of its own, a write `client` just made by other means (a
    /// script): a second round trip, on the same connection. Nothing to do without
    /// confirmation.
    pub(crate) async fn confirm(&self, client: &WithOptions<Client>) -> Result<(), FredError> {
        if self.replicas == 0 {
            return Ok(());
        }
        let (wait, arguments) = self.wait_command();
        let confirmed = client.custom::<Value, _>(wait, arguments).await?;
        self.check(&confirmed)
    }

    /// `WAIT replicas timeout`, sent as a non-blocking custom command: fred would otherwise
    /// mark the connection blocked, while Redis answers `WAIT` within its timeout by itself.
    fn wait_command(&self) -> (CustomCommand, Vec<Value>) {
        let wait_millis = i64::try_from(self.wait.as_millis()).unwrap_or(i64::MAX);
        (
            CustomCommand::new_static("WAIT", ClusterHash::FirstKey, false),
            vec![
                Value::from(i64::from(self.replicas)),
                Value::from(wait_millis),
            ],
        )
    }

    /// Whether `WAIT`'s answer, `confirmed`, reaches the replicas required.
    fn check(&self, confirmed: &Value) -> Result<(), FredError> {
        let confirmed = confirmed.as_i64().ok_or_else(|| {
            FredError::new(
                FredKind::Protocol,
                "WAIT did not answer a number of replicas",
            )
        })?;
        if confirmed >= i64::from(self.replicas) {
            return Ok(());
        }
        Err(FredError::new(
            FredKind::Unknown,
            format!(
                "NOREPLICAS the write reached {confirmed} of the {} replicas required within {:?}",
                self.replicas, self.wait
            ),
        ))
    }
}
