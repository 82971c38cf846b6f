//! [`ScriptedBackend`] and [`ScriptHandle`]: a tier whose every answer the test gives by hand.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, GetFuture, Op, Result, TierFuture, WriteFuture,
};

/// A tier whose operations are answered by the test through a [`ScriptHandle`]; build the pair
/// with [`scripted`].
///
/// Each operation sends a [`Call`] to the handle as soon as it is called (before its future is
/// polled, as `tower-test`'s mock does), and its future waits for the test to answer it. Every future it returns is [`TierFuture::pending`]. If the test drops the call
/// without answering, or drops the handle, the operation fails with
/// [`ErrorKind::Internal`](tierkit_core::ErrorKind::Internal). Clones send to the same handle.
#[derive(Clone)]
pub struct ScriptedBackend {
    label: Arc<str>,
    calls: mpsc::UnboundedSender<Call>,
}

/// The test's side of a [`ScriptedBackend`]: receives its calls, in the order they were made.
#[derive(Debug)]
pub struct ScriptHandle {
    calls: mpsc::UnboundedReceiver<Call>,
}

/// A pair of a [`ScriptedBackend`] labelled `label` and the [`ScriptHandle`] that answers it
/// (in the manner of `tower-test`'s mock pair).
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Backend, Op};
/// use tierkit_testkit::{Clock, key, scripted, value};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tierkit_core::Result<()> {
/// let (tier, mut handle) = scripted("l2");
/// let hit = value("v", Clock::System.now(), Duration::from_secs(60));
///
/// let k = key("a");
/// // The call reaches the handle as soon as `get` is called.
/// let answer = tier.get(&k);
/// let call = handle.next_call().await;
/// assert_eq!(call.op(), Op::Get);
/// assert_eq!(call.key(), Some(&k));
/// call.respond_get(Ok(Some(hit.clone())));
/// assert_eq!(answer.await?, Some(hit));
///
/// // An unanswered call fails the operation.
/// let answer = tier.delete(&k);
/// drop(handle.next_call().await);
/// assert!(answer.await.is_err());
/// # Ok(()) }
/// ```
#[must_use]
pub fn scripted(label: &str) -> (ScriptedBackend, ScriptHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        ScriptedBackend {
            label: Arc::from(label),
            calls: tx,
        },
        ScriptHandle { calls: rx },
    )
}

/// One operation of a [`ScriptedBackend`], waiting for its answer.
///
/// Answer a `get` with [`respond_get`](Call::respond_get) and a `set`, `delete` or `clear` with
/// [`respond_write`](Call::respond_write); [`respond_err`](Call::respond_err) fits any call.
/// Dropping the call unanswered makes the operation fail with an internal error.
pub struct Call {
    op: Op,
    key: Option<CacheKey>,
    value: Option<CacheValue>,
    conditional: bool,
    reply: Reply,
}

enum Reply {
    Get(oneshot::Sender<Result<Option<CacheValue>>>),
    Write(oneshot::Sender<Result<()>>),
}

impl Call {
    /// The operation.
    #[must_use]
    pub fn op(&self) -> Op {
        self.op
    }

    /// The key (`None` for `clear`).
    #[must_use]
    pub fn key(&self) -> Option<&CacheKey> {
        self.key.as_ref()
    }

    /// The value being stored (`Some` only for `set` and `set_if_newer`).
    #[must_use]
    pub fn value(&self) -> Option<&CacheValue> {
        self.value.as_ref()
    }

    /// Whether the call is a [`set_if_newer`](Backend::set_if_newer) (its [`op`](Call::op) is
    /// [`Op::Set`]): the script decides, as the tier would, whether it stores.
    #[must_use]
    pub fn is_conditional(&self) -> bool {
        self.conditional
    }

    /// Answers a `get`. A dropped operation future is not an error here: the answer is then
    /// discarded.
    ///
    /// # Panics
    ///
    /// When the call is not a `get`.
    pub fn respond_get(self, answer: Result<Option<CacheValue>>) {
        match self.reply {
            Reply::Get(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Write(_) => panic!("respond_get called on a {} call", self.op),
        }
    }

    /// Answers a `set`, `delete` or `clear`.
    ///
    /// # Panics
    ///
    /// When the call is a `get`.
    pub fn respond_write(self, answer: Result<()>) {
        match self.reply {
            Reply::Write(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Get(_) => panic!("respond_write called on a get call"),
        }
    }

    /// Answers a `get` with a hit.
    ///
    /// # Panics
    ///
    /// When the call is not a `get`.
    pub fn respond_hit(self, value: CacheValue) {
        self.respond_get(Ok(Some(value)));
    }

    /// Answers a `get` with a miss.
    ///
    /// # Panics
    ///
    /// When the call is not a `get`.
    pub fn respond_miss(self) {
        self.respond_get(Ok(None));
    }

    /// Answers a `set`, `delete` or `clear` with success.
    ///
    /// # Panics
    ///
    /// When the call is a `get`.
    pub fn respond_ok(self) {
        self.respond_write(Ok(()));
    }

    /// Fails the call, whatever its operation.
    pub fn respond_err(self, error: BackendError) {
        match self.reply {
            Reply::Get(tx) => {
                let _ = tx.send(Err(error));
            }
            Reply::Write(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }

    /// Whether the operation that made this call has been dropped (nobody awaits the answer).
    #[must_use]
    pub fn is_abandoned(&self) -> bool {
        match &self.reply {
            Reply::Get(tx) => tx.is_closed(),
            Reply::Write(tx) => tx.is_closed(),
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("op", &self.op)
            .field("key", &self.key)
            .field("value", &self.value)
            .field("conditional", &self.conditional)
            .finish_non_exhaustive()
    }
}

impl ScriptHandle {
    /// Waits for the next call.
    ///
    /// # Panics
    ///
    /// When every [`ScriptedBackend`] of the pair has been dropped and no call is left, since
    /// no call can come any more.
    pub async fn next_call(&mut self) -> Call {
        match self.calls.recv().await {
            Some(call) => call,
            None => panic!("every ScriptedBackend of this handle was dropped: no call will come"),
        }
    }

    /// The next call if one is waiting, without waiting.
    pub fn try_next_call(&mut self) -> Option<Call> {
        self.calls.try_recv().ok()
    }

    /// Calls waiting to be taken.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.calls.len()
    }
}

impl ScriptedBackend {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        key: Option<CacheKey>,
        value: Option<(CacheValue, bool)>,
        reply: impl FnOnce(oneshot::Sender<Result<T>>) -> Reply,
    ) -> TierFuture<'a, T> {
        let (tx, rx) = oneshot::channel();
        let (value, conditional) = value.map_or((None, false), |(value, conditional)| {
            (Some(value), conditional)
        });
        let call = Call {
            op,
            key,
            value,
            conditional,
            reply: reply(tx),
        };
        let sent = self.calls.send(call).is_ok();
        TierFuture::pending(async move {
            if !sent {
                return Err(BackendError::internal(
                    Arc::clone(&self.label),
                    op,
                    "the script handle was dropped",
                ));
            }
            match rx.await {
                Ok(answer) => answer,
                Err(_) => Err(BackendError::internal(
                    Arc::clone(&self.label),
                    op,
                    "the script dropped the call without answering",
                )),
            }
        })
    }
}

impl fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedBackend")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Backend for ScriptedBackend {
    fn label(&self) -> &str {
        &self.label
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        self.call(Op::Get, Some(key.clone()), None, Reply::Get)
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.call(
            Op::Set,
            Some(key.clone()),
            Some((value, false)),
            Reply::Write,
        )
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.call(
            Op::Set,
            Some(key.clone()),
            Some((value, true)),
            Reply::Write,
        )
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        self.call(Op::Delete, Some(key.clone()), None, Reply::Write)
    }

    fn clear(&self) -> WriteFuture<'_> {
        self.call(Op::Clear, None, None, Reply::Write)
    }
}
