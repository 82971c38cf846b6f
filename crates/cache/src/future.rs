//! [`FetchFuture`]: the future of a read-through call, answered at once on an L1 hit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::CacheError;
use crate::hit::Hit;

/// The boxed future of a read-through call's slow path.
type SlowPath<'a, V> = Pin<Box<dyn Future<Output = Result<Hit<V>, CacheError>> + Send + 'a>>;

/// The future of [`Cache::get_or_fetch`](crate::Cache::get_or_fetch) and its variants.
///
/// The call itself reads L1: a hit (or an answer L1 alone can give, such as an invalid key)
/// is held ready, with no allocation and no state machine, and the first poll returns it.
/// Anything else (a miss, a stale value to revalidate) continues on one boxed future, which
/// joins or leads the key's flight when polled. Dropping the future before it completes is
/// the caller's cancellation: the flight itself goes on for its other callers.
///
/// Polling it again after it completed panics, as polling a finished `async fn` does.
#[must_use = "futures do nothing unless polled"]
pub struct FetchFuture<'a, V> {
    state: State<'a, V>,
}

enum State<'a, V> {
    Ready(Option<Result<Hit<V>, CacheError>>),
    Pending(SlowPath<'a, V>),
}

impl<'a, V> FetchFuture<'a, V> {
    /// An answer available now.
    #[inline]
    pub(crate) fn ready(answer: Result<Hit<V>, CacheError>) -> Self {
        FetchFuture {
            state: State::Ready(Some(answer)),
        }
    }

    /// An answer that needs the slow path.
    pub(crate) fn pending(
        slow: impl Future<Output = Result<Hit<V>, CacheError>> + Send + 'a,
    ) -> Self {
        FetchFuture {
            state: State::Pending(Box::pin(slow)),
        }
    }

    /// Whether the answer is available without awaiting (L1 answered).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready(Some(_)))
    }
}

// Sound: the ready answer is moved out by value and the slow path is already pinned in its
// box; nothing is pinned structurally.
impl<V> Unpin for FetchFuture<'_, V> {}

impl<V> Future for FetchFuture<'_, V> {
    type Output = Result<Hit<V>, CacheError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(answer) => match answer.take() {
                Some(answer) => Poll::Ready(answer),
                // Invariant: a completed future is not polled again (the `Future` contract);
                // an `async fn` panics here too.
                #[allow(clippy::panic)]
                None => panic!("FetchFuture polled after completion"),
            },
            State::Pending(slow) => slow.as_mut().poll(cx),
        }
    }
}

impl<V> fmt::Debug for FetchFuture<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.state {
            State::Ready(Some(_)) => "FetchFuture::Ready",
            State::Ready(None) => "FetchFuture::Done",
            State::Pending(_) => "FetchFuture::Pending",
        })
    }
}
