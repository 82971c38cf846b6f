//! Read-through behaviours 10-13 and 21: loader errors shared by every waiter and never
//! cached, error type erasure, remote tier failures as counted misses, loader panics caught
//! and shared as an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use support::{
    Answer, Calls, FaultyStack, Gate, Stack, assert_one_shared_value, counting, hits, key, settle,
    spawn_fetch, spawn_fetches, write_l3_only,
};
use tierkit_cache::{
    Cache, CacheError, CacheStats, FetchContext, FetchOptions, LoaderError, Source,
};
use tierkit_core::{ErrorKind, Op};
use tierkit_testkit::{Fault, InjectedFault};

/// A loader error type of its own, to show that errors of different types coalesce.
#[derive(Debug, PartialEq, Eq)]
struct UpstreamDown {
    status: u16,
}

impl fmt::Display for UpstreamDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream answered {}", self.status)
    }
}

impl std::error::Error for UpstreamDown {}

/// A second one, never produced: its loader is the joiner's.
#[derive(Debug)]
struct NeverSeen;

impl fmt::Display for NeverSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("never seen")
    }
}

impl std::error::Error for NeverSeen {}

/// A loader for `get_or_fetch` that counts its call, waits for `gate` (when given) and fails
/// with `error`.
fn failing<E: Send + 'static>(
    calls: &Calls,
    gate: Option<&Gate>,
    error: E,
) -> impl FnOnce() -> BoxFuture<'static, Result<String, E>> + Send + 'static + use<E> {
    let (calls, opened) = (calls.clone(), gate.map(Gate::opened));
    move || {
        Box::pin(async move {
            calls.bump();
            if let Some(opened) = opened {
                opened.await;
            }
            Err(error)
        })
    }
}

/// The loader error of a failed call.
fn loader_error(result: Answer<String>) -> LoaderError {
    match result {
        Err(CacheError::Loader(error)) => error,
        other => panic!("expected a loader error, got {other:?}"),
    }
}

/// Asserts that nothing of key `k` reached any tier or the codec.
fn assert_nothing_stored(stack: &Stack<String>, k: &str) {
    assert!(stack.l1.peek(&key(k)).is_none(), "nothing in L1");
    assert_eq!(stack.l1.inserts(), 0, "no L1 insert");
    assert_eq!(stack.l2.calls().set, 0, "no L2 write");
    assert_eq!(stack.l3.calls().set, 0, "no L3 write");
    assert!(stack.l2.peek(&key(k)).is_none());
    assert!(stack.l3.peek(&key(k)).is_none());
    assert_eq!(stack.codec.encodes(), 0, "nothing encoded");
}

/// Flights, coalesced callers, loader calls and loader errors, as counted.
fn loader_counts(stats: &CacheStats) -> (u64, u64, u64, u64) {
    (
        stats.flights,
        stats.coalesced,
        stats.loader_calls,
        stats.loader_errors,
    )
}

/// Behaviour 10: a loader error reaches every one of 50 queued waiters as the same shared
/// error (`LoaderError::ptr_eq`); the loader runs once and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b10_a_loader_error_is_shared_by_every_waiter() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let gate = Gate::closed();
    let tasks = spawn_fetches(&cache, "k", 50, || {
        failing(&calls, Some(&gate), std::io::Error::other("origin down"))
    });
    settle().await;
    assert_eq!(
        cache.flights_in_progress(),
        1,
        "50 callers queued on one flight"
    );
    assert_eq!(calls.get(), 1);
    gate.open();
    let mut errors = Vec::new();
    for task in tasks {
        errors.push(loader_error(task.await.unwrap()));
    }

    assert_eq!(calls.get(), 1, "the loader ran once for 50 callers");
    assert_eq!(errors.len(), 50);
    assert!(
        errors.iter().all(|e| LoaderError::ptr_eq(e, &errors[0])),
        "every waiter holds the same shared error"
    );
    let io = errors[0].downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.to_string(), "origin down");
    assert_eq!(loader_counts(&cache.stats()), (1, 49, 1, 1));
    settle().await;
    assert_nothing_stored(&stack, "k");
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 11: errors are not cached. Each of two sequential failing calls starts its own
/// flight (loader count 2, two distinct errors); a third call that succeeds is stored.
#[tokio::test(start_paused = true)]
async fn b11_errors_are_not_cached() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let failing = |calls: Calls| {
        move || async move {
            let n = calls.bump();
            Err::<String, _>(std::io::Error::other(format!("failure {n}")))
        }
    };

    let first = loader_error(cache.get_or_fetch("k", failing(calls.clone())).await);
    assert_eq!(cache.flights_in_progress(), 0, "the failed flight is gone");
    assert!(stack.l1.peek(&key("k")).is_none(), "no error entry in L1");
    let second = loader_error(cache.get_or_fetch("k", failing(calls.clone())).await);

    assert_eq!(calls.get(), 2, "the second call ran the loader again");
    assert!(
        !LoaderError::ptr_eq(&first, &second),
        "two flights, two errors"
    );
    assert_eq!(first.get().to_string(), "failure 1");
    assert_eq!(second.get().to_string(), "failure 2");
    assert_eq!(loader_counts(&cache.stats()), (2, 0, 2, 2));
    settle().await;
    assert_nothing_stored(&stack, "k");

    // The key is not poisoned: the next successful load is stored as usual.
    let hit = cache
        .get_or_fetch("k", || async { Ok::<_, std::io::Error>("ok".to_owned()) })
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "ok"));
    settle().await;
    assert_eq!(stack.l2.calls().set, 1);
    let again = cache
        .get_or_fetch("k", || async {
            Ok::<_, std::io::Error>("unused".to_owned())
        })
        .await
        .unwrap();
    assert_eq!((again.source(), again.as_str()), (Source::L1, "ok"));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 12: loaders with different error types coalesce on one flight. The flight runs
/// the starter's loader; every caller gets its error, type-erased and shared, and recovers the
/// concrete type with `downcast_ref`, whatever its own loader's error type was.
#[tokio::test(start_paused = true)]
async fn b12_loaders_with_different_error_types_coalesce_and_downcast() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let (starter_calls, joiner_calls) = (Calls::default(), Calls::default());
    let gate = Gate::closed();

    let starter = spawn_fetch(
        &cache,
        "k",
        failing(&starter_calls, Some(&gate), UpstreamDown { status: 503 }),
    );
    settle().await;
    // Joiners whose loaders have other error types: io::Error, NeverSeen, a boxed error.
    let io_joiner = spawn_fetch(
        &cache,
        "k",
        failing(&joiner_calls, None, std::io::Error::other("io")),
    );
    let custom_joiner = spawn_fetch(&cache, "k", failing(&joiner_calls, None, NeverSeen));
    let boxed: Box<dyn std::error::Error + Send + Sync> = "boxed".into();
    let boxed_joiner = spawn_fetch(&cache, "k", failing(&joiner_calls, None, boxed));
    settle().await;
    assert_eq!(cache.stats().coalesced, 3, "the three joiners coalesced");
    gate.open();

    let errors = [
        loader_error(starter.await.unwrap()),
        loader_error(io_joiner.await.unwrap()),
        loader_error(custom_joiner.await.unwrap()),
        loader_error(boxed_joiner.await.unwrap()),
    ];
    assert_eq!((starter_calls.get(), joiner_calls.get()), (1, 0));
    for error in &errors {
        assert!(LoaderError::ptr_eq(error, &errors[0]));
        assert_eq!(
            error.downcast_ref::<UpstreamDown>(),
            Some(&UpstreamDown { status: 503 }),
            "every caller downcasts to the starter's error type"
        );
        assert!(error.downcast_ref::<std::io::Error>().is_none());
        assert!(error.downcast_ref::<NeverSeen>().is_none());
        assert_eq!(error.get().to_string(), "upstream answered 503");
    }
    // The erased error is also reachable through the std source chain of the CacheError:
    // CacheError -> LoaderError -> the starter's own error.
    let cache_error = CacheError::Loader(errors[1].clone());
    let source = std::error::Error::source(&cache_error).unwrap();
    assert!(source.downcast_ref::<LoaderError>().is_some());
    let own = source
        .source()
        .and_then(|s| s.downcast_ref::<UpstreamDown>());
    assert_eq!(own, Some(&UpstreamDown { status: 503 }));
    assert_eq!(cache.stats().loader_calls, 1);
    assert_eq!(cache.flights_in_progress(), 0);
}

/// Behaviour 13: an L2 read error is a counted miss by default: the flight goes on to L3,
/// which answers; the loader is not called.
#[tokio::test(start_paused = true)]
async fn b13_an_l2_read_error_is_a_counted_miss_and_l3_answers() {
    let t = FaultyStack::<String>::new();
    let cache = t.cache();
    // Only L3 holds the value.
    cache
        .set_with("k", "from-l3".to_owned(), &write_l3_only())
        .await
        .unwrap();
    t.l2.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    let calls = Calls::default();
    let hit = cache
        .get_or_fetch("k", counting(&calls, "loader".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "from-l3"));
    assert_eq!(calls.get(), 0);
    assert_eq!((t.l2.calls().get, t.l3.calls().get), (1, 1));
    let stats = cache.stats();
    assert_eq!(stats.tier_errors, [1, 0], "the L2 error is counted");
    assert_eq!(stats.tier_timeouts, [0, 0]);
    assert_eq!(stats.loader_calls, 0);
    settle().await;
    // The L3 hit refilled L2 (the failed read did not stop the flight's normal work).
    assert!(t.stack.l2.peek(&key("k")).is_some());
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 13: an L2 read that times out and an L3 read that fails are both counted
/// misses: the loader runs once, its value reaches every caller and is written back to both
/// tiers.
#[tokio::test(start_paused = true)]
async fn b13_tier_timeout_and_error_are_misses_and_the_loader_runs() {
    let t = FaultyStack::<String>::new();
    let cache = t.cache();
    t.l2.push(Op::Get, Fault::Hang);
    t.l3.push(Op::Get, Fault::Fail(ErrorKind::Internal));
    let options = FetchOptions::new().tier_timeout(Duration::from_secs(2));
    let calls = Calls::default();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (cache, load) = (cache.clone(), counting(&calls, "loaded".to_owned()));
            tokio::spawn(async move { cache.get_or_fetch_with("k", &options, |_| load()).await })
        })
        .collect();
    let start = tokio::time::Instant::now();
    let hits = hits(tasks).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "one L2 tier timeout, then on"
    );
    assert!(
        hits.iter()
            .all(|h| h.source() == Source::Loader && h.as_str() == "loaded")
    );
    assert_one_shared_value(&hits);
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(stats.tier_timeouts, [1, 0]);
    assert_eq!(stats.tier_errors, [0, 1]);
    assert_eq!(stats.loader_calls, 1);
    settle().await;
    assert_eq!(
        (t.l2.calls().set, t.l3.calls().set),
        (1, 1),
        "written back once each"
    );
    assert!(t.stack.l2.peek(&key("k")).is_some());
    assert!(t.stack.l3.peek(&key("k")).is_some());
    assert_eq!(cache.keys_in_progress(), 0);
}

/// The tier error of a failed call.
fn tier_error(result: Answer<String>) -> (Source, tierkit_core::BackendError) {
    match result {
        Err(CacheError::Tier { tier, source }) => (tier, source),
        other => panic!("expected a tier error, got {other:?}"),
    }
}

/// Behaviour 13: with `strict_tiers`, a remote read error or timeout fails the call (every
/// waiter gets it), the loader is not called and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b13_strict_tiers_turns_tier_failures_into_errors() {
    let t = FaultyStack::<String>::new();
    let cache = t.cache();
    let strict = FetchOptions::new()
        .strict_tiers(true)
        .tier_timeout(Duration::from_secs(2));
    let calls = Calls::default();
    let load = |calls: Calls| {
        let load = counting(&calls, "loaded".to_owned());
        move |_: FetchContext<String>| load()
    };

    // An L2 read error, seen by two coalesced callers.
    t.l2.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    let (a, b) = tokio::join!(
        cache.get_or_fetch_with("k", &strict, load(calls.clone())),
        cache.get_or_fetch_with("k", &strict, load(calls.clone())),
    );
    let (tier, error) = tier_error(a);
    assert_eq!(tier, Source::L2);
    assert_eq!(error.kind(), ErrorKind::Connection);
    assert_eq!(error.tier_label(), Some("l2"));
    let (tier_b, _) = tier_error(b);
    assert_eq!(tier_b, Source::L2);
    assert_eq!(t.l3.calls().get, 0, "the flight stopped at L2");

    // An L2 read timeout.
    t.l2.push(Op::Get, Fault::Hang);
    let (tier, error) = tier_error(
        cache
            .get_or_fetch_with("k", &strict, load(calls.clone()))
            .await,
    );
    assert_eq!(tier, Source::L2);
    assert_eq!(error.kind(), ErrorKind::Timeout);

    // An L3 read error after an L2 miss.
    t.l3.push(Op::Get, Fault::Fail(ErrorKind::PermissionDenied));
    let (tier, error) = tier_error(
        cache
            .get_or_fetch_with("k", &strict, load(calls.clone()))
            .await,
    );
    assert_eq!(tier, Source::L3);
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    let injected =
        std::error::Error::source(&error).and_then(|s| s.downcast_ref::<InjectedFault>());
    assert_eq!(injected.map(|f| f.op), Some(Op::Get));

    assert_eq!(calls.get(), 0, "the loader never ran");
    let stats = cache.stats();
    assert_eq!(stats.tier_errors, [1, 1]);
    assert_eq!(stats.tier_timeouts, [1, 0]);
    assert_eq!(stats.flights, 3);
    settle().await;
    assert!(t.stack.l1.peek(&key("k")).is_none());
    assert_eq!((t.l2.calls().set, t.l3.calls().set), (0, 0));
    assert_eq!(cache.keys_in_progress(), 0);

    // Without faults, the same strict call loads and stores normally.
    let hit = cache
        .get_or_fetch_with("k", &strict, load(calls.clone()))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(calls.get(), 1);
}

/// The panic message of a failed call.
fn panic_message(result: Answer<String>) -> Arc<str> {
    match result {
        Err(CacheError::LoaderPanicked { message }) => message,
        other => panic!("expected a loader panic, got {other:?}"),
    }
}

/// Spawns `n` callers of `k` whose loaders (only the first runs) are built by `loader`,
/// settles, and returns their tasks.
async fn spawn_callers<F, Fut>(
    cache: &Cache<String>,
    k: &'static str,
    n: usize,
    loader: impl Fn() -> F,
) -> Vec<tokio::task::JoinHandle<Answer<String>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, std::io::Error>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(spawn_fetch(cache, k, loader()));
        settle().await;
    }
    tasks
}

/// Checks the aftermath of a panicking flight and that the next call retries.
async fn assert_panic_aftermath(stack: &Stack<String>, cache: &Cache<String>, k: &str) {
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.loader_panics), (1, 1));
    assert_eq!(
        stats.flights_aborted, 0,
        "a loader panic is a result, not an aborted flight"
    );
    assert_eq!(cache.flights_in_progress(), 0, "the flight is removed");
    settle().await;
    assert_nothing_stored(stack, k);
    assert_eq!(cache.keys_in_progress(), 0);

    // The next call retries.
    let retry = Calls::default();
    let hit = cache
        .get_or_fetch(k, counting(&retry, "recovered".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "recovered"));
    assert!(!hit.is_coalesced());
    assert_eq!(retry.get(), 1);
    assert_eq!(cache.stats().flights, 2);
}

/// Behaviour 21: a panic inside the loader's future is caught in the flight: every waiter
/// gets `LoaderPanicked` with the panic's message, no waiter's task unwinds, nothing is stored,
/// the flight is removed and the next call retries.
#[tokio::test(start_paused = true)]
async fn b21_a_panic_in_the_loader_future_is_shared_as_an_error() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let gate = Gate::closed();
    let tasks = spawn_callers(&cache, "k", 10, || {
        let (calls, opened) = (calls.clone(), gate.opened());
        move || async move {
            calls.bump();
            opened.await;
            if calls.get() > 0 {
                panic!("loader future blew up");
            }
            Ok::<String, std::io::Error>("unreachable".to_owned())
        }
    })
    .await;
    assert_eq!(cache.stats().coalesced, 9);
    gate.open();
    for task in tasks {
        // `task.await` is Err only if the waiter's task itself panicked.
        let result = task.await.expect("no waiter task unwinds");
        assert_eq!(&*panic_message(result), "loader future blew up");
    }
    assert_eq!(calls.get(), 1);
    assert_panic_aftermath(&stack, &cache, "k").await;
}

/// Behaviour 21: a panic in the loader closure itself, before it returns a future, is
/// caught the same way (here with a formatted, `String` payload).
#[tokio::test(start_paused = true)]
async fn b21_a_panic_in_the_loader_closure_is_shared_as_an_error() {
    let stack = Stack::<String>::new();
    let calls = Calls::default();
    // Hold L2's read so the other callers queue before the closure runs.
    let (held, mut handle) = tierkit_testkit::scripted("l2");
    let cache = stack.builder().l2(held).build();
    let tasks = spawn_callers(&cache, "k", 10, || {
        let calls = calls.clone();
        move || {
            let n = calls.bump();
            if n > 0 {
                panic!("loader closure blew up before its future (call {n})");
            }
            async { Ok::<String, std::io::Error>("unreachable".to_owned()) }
        }
    })
    .await;
    let read = handle.next_call().await;
    assert_eq!(cache.stats().coalesced, 9);
    assert_eq!(calls.get(), 0, "the closure has not run yet");
    read.respond_miss();
    let mut messages = Vec::new();
    for task in tasks {
        let result = task.await.expect("no waiter task unwinds");
        messages.push(panic_message(result));
    }
    assert_eq!(calls.get(), 1);
    assert!(
        messages
            .iter()
            .all(|m| &**m == "loader closure blew up before its future (call 1)")
    );
    // The retry's flight reads L2 again: answer it.
    let retry_read = tokio::spawn(async move {
        let read = handle.next_call().await;
        read.respond_miss();
        // The write-back of the retried value.
        let write = handle.next_call().await;
        write.respond_ok();
    });
    assert_panic_aftermath_scripted(&stack, &cache, "k").await;
    retry_read.await.unwrap();
}

/// As [`assert_panic_aftermath`] for a cache whose L2 is scripted (its writes are not in the
/// stack's memory tiers).
async fn assert_panic_aftermath_scripted(stack: &Stack<String>, cache: &Cache<String>, k: &str) {
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.loader_panics), (1, 1));
    assert_eq!(stats.flights_aborted, 0);
    assert_eq!(cache.flights_in_progress(), 0, "the flight is removed");
    assert!(stack.l1.peek(&key(k)).is_none(), "nothing in L1");
    assert_eq!(stack.codec.encodes(), 0, "nothing encoded");
    assert_eq!(cache.keys_in_progress(), 0);
    let hit = cache
        .get_or_fetch(k, || async {
            Ok::<_, std::io::Error>("recovered".to_owned())
        })
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "recovered"));
    assert_eq!(cache.stats().flights, 2);
    assert_eq!(cache.stats().loader_calls, 2);
}

/// Behaviour 21: a panic with a payload that is not a string still reaches every waiter as
/// `LoaderPanicked`, with a placeholder message.
#[tokio::test(start_paused = true)]
async fn b21_a_panic_with_a_non_string_payload_is_caught_too() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let gate = Gate::closed();
    let tasks = spawn_callers(&cache, "k", 3, || {
        let opened = gate.opened();
        move || async move {
            opened.await;
            std::panic::panic_any(42_u32);
            #[allow(unreachable_code)]
            Ok::<String, std::io::Error>(String::new())
        }
    })
    .await;
    gate.open();
    for task in tasks {
        let message = panic_message(task.await.expect("no waiter task unwinds"));
        assert!(!message.is_empty());
    }
    assert_panic_aftermath(&stack, &cache, "k").await;
}
