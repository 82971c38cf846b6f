//! Read-through behaviours 10-13 and 21: loader errors shared by every waiter and never
//! cached, error type erasure, remote tier failures as counted misses, loader panics caught
//! and shared as an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use support::{Calls, Stack, key, settle};
use tierkit_cache::{Cache, CacheError, FetchOptions, LoaderError, Source};
use tierkit_core::{ErrorKind, Op};
use tierkit_testkit::{Fault, FaultyBackend, InjectedFault, MemoryBackend};
use tokio::sync::watch;

/// A gate the loaders wait on, so every caller is queued before the flight ends.
fn gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn wait_open(mut gate: watch::Receiver<bool>) {
    let _ = gate.wait_for(|open| *open).await;
}

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

/// The loader error of a failed call.
fn loader_error(result: Result<tierkit_cache::Hit<String>, CacheError>) -> LoaderError {
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

/// Behaviour 10: a loader error reaches every one of 50 queued waiters as the same shared
/// error (`LoaderError::ptr_eq`); the loader runs once and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b10_a_loader_error_is_shared_by_every_waiter() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let (open, gate_rx) = gate();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, calls, gate_rx) = (cache.clone(), calls.clone(), gate_rx.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch("k", move || async move {
                    calls.bump();
                    wait_open(gate_rx).await;
                    Err::<String, _>(std::io::Error::other("origin down"))
                })
                .await
        }));
    }
    settle().await;
    assert_eq!(
        cache.flights_in_progress(),
        1,
        "50 callers queued on one flight"
    );
    assert_eq!(calls.get(), 1);
    open.send_replace(true);
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
    let stats = cache.stats();
    assert_eq!(
        (
            stats.flights,
            stats.coalesced,
            stats.loader_calls,
            stats.loader_errors
        ),
        (1, 49, 1, 1)
    );
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
    assert_eq!(first.to_string(), "failure 1");
    assert_eq!(second.to_string(), "failure 2");
    let stats = cache.stats();
    assert_eq!(
        (
            stats.flights,
            stats.coalesced,
            stats.loader_calls,
            stats.loader_errors
        ),
        (2, 0, 2, 2)
    );
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
    let (open, gate_rx) = gate();

    let starter = tokio::spawn({
        let (cache, calls, gate_rx) = (cache.clone(), starter_calls.clone(), gate_rx.clone());
        async move {
            cache
                .get_or_fetch("k", move || async move {
                    calls.bump();
                    wait_open(gate_rx).await;
                    Err::<String, _>(UpstreamDown { status: 503 })
                })
                .await
        }
    });
    settle().await;
    // Joiners whose loaders have other error types: io::Error, NeverSeen, a boxed error.
    let io_joiner = tokio::spawn({
        let (cache, calls) = (cache.clone(), joiner_calls.clone());
        async move {
            cache
                .get_or_fetch("k", move || async move {
                    calls.bump();
                    Err::<String, _>(std::io::Error::other("io"))
                })
                .await
        }
    });
    let custom_joiner = tokio::spawn({
        let (cache, calls) = (cache.clone(), joiner_calls.clone());
        async move {
            cache
                .get_or_fetch("k", move || async move {
                    calls.bump();
                    Err::<String, _>(NeverSeen)
                })
                .await
        }
    });
    let boxed_joiner = tokio::spawn({
        let (cache, calls) = (cache.clone(), joiner_calls.clone());
        async move {
            cache
                .get_or_fetch("k", move || async move {
                    calls.bump();
                    Err::<String, Box<dyn std::error::Error + Send + Sync>>("boxed".into())
                })
                .await
        }
    });
    settle().await;
    assert_eq!(cache.stats().coalesced, 3, "the three joiners coalesced");
    open.send_replace(true);

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
        assert_eq!(error.to_string(), "upstream answered 503");
    }
    // The erased error is also reachable through the std source chain of the CacheError.
    let cache_error = CacheError::Loader(errors[1].clone());
    let source = std::error::Error::source(&cache_error).unwrap();
    assert!(source.downcast_ref::<LoaderError>().is_some());
    assert_eq!(cache.stats().loader_calls, 1);
    assert_eq!(cache.flights_in_progress(), 0);
}

/// A stack whose remote tiers inject faults.
struct FaultyStack {
    stack: Stack<String>,
    l2: FaultyBackend<MemoryBackend>,
    l3: FaultyBackend<MemoryBackend>,
    cache: Cache<String>,
}

impl FaultyStack {
    fn new() -> Self {
        let stack = Stack::<String>::new();
        let l2 = FaultyBackend::new(stack.l2.clone());
        let l3 = FaultyBackend::new(stack.l3.clone());
        let cache = stack.builder().l2(l2.clone()).l3(l3.clone()).build();
        FaultyStack {
            stack,
            l2,
            l3,
            cache,
        }
    }
}

/// Behaviour 13: an L2 read error is a counted miss by default: the flight goes on to L3,
/// which answers; the loader is not called.
#[tokio::test(start_paused = true)]
async fn b13_an_l2_read_error_is_a_counted_miss_and_l3_answers() {
    let t = FaultyStack::new();
    // Only L3 holds the value.
    t.cache
        .set_with(
            "k",
            "from-l3".to_owned(),
            &FetchOptions::new().skip_l1_write(true).skip_l2_write(true),
        )
        .await
        .unwrap();
    t.l2.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    let calls = Calls::default();
    let hit = t
        .cache
        .get_or_fetch("k", {
            let calls = calls.clone();
            move || async move {
                calls.bump();
                Ok::<_, std::io::Error>("loader".to_owned())
            }
        })
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "from-l3"));
    assert_eq!(calls.get(), 0);
    assert_eq!((t.l2.calls().get, t.l3.calls().get), (1, 1));
    let stats = t.cache.stats();
    assert_eq!(stats.tier_errors, [1, 0], "the L2 error is counted");
    assert_eq!(stats.tier_timeouts, [0, 0]);
    assert_eq!(stats.loader_calls, 0);
    settle().await;
    // The L3 hit refilled L2 (the failed read did not stop the flight's normal work).
    assert!(t.stack.l2.peek(&key("k")).is_some());
    assert_eq!(t.cache.keys_in_progress(), 0);
}

/// Behaviour 13: an L2 read that times out and an L3 read that fails are both counted
/// misses: the loader runs once, its value reaches every caller and is written back to both
/// tiers.
#[tokio::test(start_paused = true)]
async fn b13_tier_timeout_and_error_are_misses_and_the_loader_runs() {
    let t = FaultyStack::new();
    t.l2.push(Op::Get, Fault::Hang);
    t.l3.push(Op::Get, Fault::Fail(ErrorKind::Internal));
    let options = FetchOptions::new().tier_timeout(Duration::from_secs(2));
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (cache, calls) = (t.cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch_with("k", &options, move |_| async move {
                    calls.bump();
                    Ok::<_, std::io::Error>("loaded".to_owned())
                })
                .await
        }));
    }
    let start = tokio::time::Instant::now();
    let mut hits = Vec::new();
    for task in tasks {
        hits.push(task.await.unwrap().unwrap());
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "one L2 tier timeout, then on"
    );
    assert!(
        hits.iter()
            .all(|h| h.source() == Source::Loader && h.as_str() == "loaded")
    );
    assert!(hits.iter().all(|h| Arc::ptr_eq(h.value(), hits[0].value())));
    assert_eq!(calls.get(), 1);
    let stats = t.cache.stats();
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
    assert_eq!(t.cache.keys_in_progress(), 0);
}

/// The tier error of a failed call.
fn tier_error(
    result: Result<tierkit_cache::Hit<String>, CacheError>,
) -> (Source, tierkit_core::BackendError) {
    match result {
        Err(CacheError::Tier { tier, source }) => (tier, source),
        other => panic!("expected a tier error, got {other:?}"),
    }
}

/// Behaviour 13: with `strict_tiers`, a remote read error or timeout fails the call (every
/// waiter gets it), the loader is not called and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b13_strict_tiers_turns_tier_failures_into_errors() {
    let t = FaultyStack::new();
    let strict = FetchOptions::new()
        .strict_tiers(true)
        .tier_timeout(Duration::from_secs(2));
    let calls = Calls::default();
    let load = |calls: Calls| {
        move |_| async move {
            calls.bump();
            Ok::<_, std::io::Error>("loaded".to_owned())
        }
    };

    // An L2 read error, seen by two coalesced callers.
    t.l2.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    let (a, b) = tokio::join!(
        t.cache.get_or_fetch_with("k", &strict, load(calls.clone())),
        t.cache.get_or_fetch_with("k", &strict, load(calls.clone())),
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
        t.cache
            .get_or_fetch_with("k", &strict, load(calls.clone()))
            .await,
    );
    assert_eq!(tier, Source::L2);
    assert_eq!(error.kind(), ErrorKind::Timeout);

    // An L3 read error after an L2 miss.
    t.l3.push(Op::Get, Fault::Fail(ErrorKind::PermissionDenied));
    let (tier, error) = tier_error(
        t.cache
            .get_or_fetch_with("k", &strict, load(calls.clone()))
            .await,
    );
    assert_eq!(tier, Source::L3);
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    let injected =
        std::error::Error::source(&error).and_then(|s| s.downcast_ref::<InjectedFault>());
    assert_eq!(injected.map(|f| f.op), Some(Op::Get));

    assert_eq!(calls.get(), 0, "the loader never ran");
    let stats = t.cache.stats();
    assert_eq!(stats.tier_errors, [1, 1]);
    assert_eq!(stats.tier_timeouts, [1, 0]);
    assert_eq!(stats.flights, 3);
    settle().await;
    assert!(t.stack.l1.peek(&key("k")).is_none());
    assert_eq!((t.l2.calls().set, t.l3.calls().set), (0, 0));
    assert_eq!(t.cache.keys_in_progress(), 0);

    // Without faults, the same strict call loads and stores normally.
    let hit = t
        .cache
        .get_or_fetch_with("k", &strict, load(calls.clone()))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(calls.get(), 1);
}

/// The panic message of a failed call.
fn panic_message(result: Result<tierkit_cache::Hit<String>, CacheError>) -> Arc<str> {
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
) -> Vec<tokio::task::JoinHandle<Result<tierkit_cache::Hit<String>, CacheError>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, std::io::Error>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (cache, loader) = (cache.clone(), loader());
        tasks.push(tokio::spawn(
            async move { cache.get_or_fetch(k, loader).await },
        ));
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
        .get_or_fetch(k, {
            let retry = retry.clone();
            move || async move {
                retry.bump();
                Ok::<_, std::io::Error>("recovered".to_owned())
            }
        })
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
    let (open, gate_rx) = gate();
    let tasks = spawn_callers(&cache, "k", 10, || {
        let (calls, gate_rx) = (calls.clone(), gate_rx.clone());
        move || async move {
            calls.bump();
            wait_open(gate_rx).await;
            if calls.get() > 0 {
                panic!("loader future blew up");
            }
            Ok::<String, std::io::Error>("unreachable".to_owned())
        }
    })
    .await;
    assert_eq!(cache.stats().coalesced, 9);
    open.send_replace(true);
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
    let (open, gate_rx) = gate();
    let tasks = spawn_callers(&cache, "k", 3, || {
        let gate_rx = gate_rx.clone();
        move || async move {
            wait_open(gate_rx).await;
            std::panic::panic_any(42_u32);
            #[allow(unreachable_code)]
            Ok::<String, std::io::Error>(String::new())
        }
    })
    .await;
    open.send_replace(true);
    for task in tasks {
        let message = panic_message(task.await.expect("no waiter task unwinds"));
        assert!(!message.is_empty());
    }
    assert_panic_aftermath(&stack, &cache, "k").await;
}
