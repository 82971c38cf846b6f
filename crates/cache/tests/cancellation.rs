//! Read-through behaviours 14-19: cancellation safety. Callers going away (the creator, one,
//! every, a random one, one polled once), the two abandon policies, aborted flights, and no
//! dependency on the creator being polled.
//!
//! Behaviour 20 (a background refresh is detached from the request that triggered it) is not
//! tested here: refreshes are not implemented yet; a refresh would be a flight like these.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use support::{
    Calls, DropFlag, Gate, MINUTE, Stack, assert_one_shared_value, cancel_when_unobserved, hits,
    key, settle,
};
use tierkit_cache::codec::{Codec, CodecError, Postcard};
use tierkit_cache::{
    Cache, CacheBuilder, CacheError, FetchContext, FetchOptions, Source, TimeoutKind,
};
use tierkit_testkit::ManualOffload;

type Answer = support::Answer<String>;
type LoaderFuture = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

/// What the loaders of a test saw: how many ran, the context each got, whether one was
/// dropped before finishing, and whether the work a loader started elsewhere (a spawned task
/// watching the token) saw the cancellation.
#[derive(Clone, Default)]
struct LoaderProbe {
    calls: Calls,
    contexts: Arc<Mutex<Vec<FetchContext<String>>>>,
    dropped: Arc<AtomicBool>,
    outside_work_cancelled: Arc<AtomicBool>,
}

impl LoaderProbe {
    /// A loader that records its context, starts "outside work" watching the token, waits
    /// for `gate`, and returns `value`. Its future holds a drop flag, disarmed once it finishes.
    fn loader(
        &self,
        gate: &Gate,
        value: &str,
    ) -> impl FnOnce(FetchContext<String>) -> LoaderFuture + Send + 'static + use<> {
        let (probe, opened, value) = (self.clone(), gate.opened(), value.to_owned());
        move |ctx: FetchContext<String>| {
            probe.calls.bump();
            probe.contexts.lock().unwrap().push(ctx.clone());
            let token = ctx.cancellation().clone();
            let seen = Arc::clone(&probe.outside_work_cancelled);
            tokio::spawn(async move {
                token.cancelled().await;
                seen.store(true, Ordering::SeqCst);
            });
            let mut flag = DropFlag::new(&probe.dropped);
            Box::pin(async move {
                opened.await;
                flag.disarm();
                Ok(value)
            })
        }
    }

    fn context(&self, i: usize) -> FetchContext<String> {
        self.contexts.lock().unwrap()[i].clone()
    }

    fn token_fired(&self, i: usize) -> bool {
        self.context(i).cancellation().is_cancelled()
    }

    fn was_dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A stack, the cache over it, a probe for its loaders and their gate (closed).
fn setup() -> (Stack<String>, Cache<String>, LoaderProbe, Gate) {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    (stack, cache, LoaderProbe::default(), Gate::closed())
}

/// Spawns a caller of `k` with `options` and a probe loader.
fn spawn_caller(
    cache: &Cache<String>,
    k: &'static str,
    options: FetchOptions,
    probe: &LoaderProbe,
    gate: &Gate,
) -> tokio::task::JoinHandle<Answer> {
    let cache = cache.clone();
    let loader = probe.loader(gate, "v");
    tokio::spawn(async move { cache.get_or_fetch_with(k, &options, loader).await })
}

/// Spawns `n` callers of `k` at once, as [`spawn_caller`].
fn spawn_callers(
    cache: &Cache<String>,
    k: &'static str,
    n: usize,
    options: FetchOptions,
    probe: &LoaderProbe,
    gate: &Gate,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| spawn_caller(cache, k, options, probe, gate))
        .collect()
}

/// Polls `fut` exactly once (with a no-op waker); whether it finished.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> bool {
    fut.now_or_never().is_some()
}

/// Asserts that `task` ended because it was cancelled (its future dropped), not with a panic.
async fn assert_cancelled(task: tokio::task::JoinHandle<Answer>) {
    let error = task.await.expect_err("the task was aborted");
    assert!(
        error.is_cancelled(),
        "the caller's future was dropped, nothing else"
    );
}

/// Asserts that the key's loaded value "v" is in L1, L2 and L3 (written once each).
async fn assert_stored(stack: &Stack<String>, k: &str) {
    settle().await;
    let entry = stack.l1.peek(&key(k)).expect("L1 holds the value");
    assert_eq!(entry.value().unwrap().as_str(), "v");
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    assert!(stack.l2.peek(&key(k)).is_some());
    assert!(stack.l3.peek(&key(k)).is_some());
}

/// Drops every spawned caller (aborts every task first), and asserts that each ended because
/// it was cancelled.
async fn drop_callers(tasks: Vec<tokio::task::JoinHandle<Answer>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert_cancelled(task).await;
    }
}

/// Asserts that the next call of "k" (under `CancelWhenUnobserved`) after a cancelled flight
/// gets its value from its loader, the probe's `calls`-th call.
async fn assert_the_next_call_loads(
    cache: &Cache<String>,
    probe: &LoaderProbe,
    gate: &Gate,
    calls: usize,
) {
    let hit = cache
        .get_or_fetch_with("k", &cancel_when_unobserved(), probe.loader(gate, "v"))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(probe.calls.get(), calls);
}

/// Asserts that nothing of key `k` was stored anywhere.
async fn assert_nothing_stored(stack: &Stack<String>, k: &str) {
    settle().await;
    assert!(stack.l1.peek(&key(k)).is_none(), "nothing in L1");
    assert_eq!(stack.l1.inserts(), 0);
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(stack.codec.encodes(), 0);
}

/// Behaviour 14: dropping the caller that created the flight changes nothing for the others:
/// they get the value, the loader runs once, the flight is not cancelled.
#[tokio::test(start_paused = true)]
async fn b14_dropping_the_creator_does_not_affect_the_other_waiters() {
    let (stack, cache, probe, gate) = setup();
    let creator = spawn_caller(&cache, "k", FetchOptions::new(), &probe, &gate);
    settle().await;
    assert_eq!(probe.calls.get(), 1, "the flight is in the loader");
    let others = spawn_callers(&cache, "k", 5, FetchOptions::new(), &probe, &gate);
    settle().await;
    creator.abort();
    assert_cancelled(creator).await;
    settle().await;
    assert!(!probe.token_fired(0));
    assert!(!probe.was_dropped());
    gate.open();
    let hits = hits(others).await;
    assert!(
        hits.iter()
            .all(|h| h.as_str() == "v" && h.source() == Source::Loader)
    );
    assert!(hits.iter().all(|h| h.is_coalesced()));
    assert_one_shared_value(&hits);
    assert_eq!(probe.calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.flights, stats.coalesced, stats.loader_calls),
        (1, 5, 1)
    );
    assert_eq!((stats.flights_abandoned, stats.flights_aborted), (0, 0));
    assert_stored(&stack, "k").await;
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 14: dropping one joined caller (here the middle one, under both abandon
/// policies) changes nothing for the others.
#[tokio::test(start_paused = true)]
async fn b14_dropping_one_joined_caller_does_not_affect_the_others() {
    for options in [FetchOptions::new(), cancel_when_unobserved()] {
        let (stack, cache, probe, gate) = setup();
        let mut tasks = spawn_callers(&cache, "k", 5, options, &probe, &gate);
        settle().await;
        let victim = tasks.remove(2);
        victim.abort();
        assert_cancelled(victim).await;
        settle().await;
        assert!(!probe.token_fired(0));
        gate.open();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().as_str(), "v");
        }
        assert_eq!(probe.calls.get(), 1);
        assert_eq!(cache.stats().flights_abandoned, 0);
        assert_stored(&stack, "k").await;
        assert_eq!(cache.keys_in_progress(), 0);
    }
}

/// Behaviour 15: with the default policy (`Continue`), a flight whose callers were all dropped
/// still completes and stores its value (L1, and L2/L3 once each); the next caller hits L1
/// without calling its loader.
#[tokio::test(start_paused = true)]
async fn b15_every_caller_dropped_with_continue_the_flight_completes_and_stores() {
    let (stack, cache, probe, gate) = setup();
    let tasks = spawn_callers(&cache, "k", 8, FetchOptions::new(), &probe, &gate);
    settle().await;
    drop_callers(tasks).await;
    settle().await;
    assert_eq!(
        cache.flights_in_progress(),
        1,
        "the flight goes on without callers"
    );
    assert!(!probe.token_fired(0));
    gate.open();
    settle().await;
    assert!(!probe.was_dropped(), "the loader ran to its end");
    assert_stored(&stack, "k").await;
    assert_eq!(cache.keys_in_progress(), 0);

    let later = LoaderProbe::default();
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), later.loader(&gate, "other"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v"));
    assert_eq!((probe.calls.get(), later.calls.get()), (1, 0));
    let stats = cache.stats();
    assert_eq!((stats.flights, stats.flights_abandoned), (1, 0));
}

/// Behaviour 16: with `CancelWhenUnobserved`, when the last caller goes away the loader's
/// token fires (seen by work the loader started elsewhere), the loader's future is dropped,
/// nothing is stored and the flight is removed at once; a caller arriving right after starts
/// a new flight and never joins the doomed one.
#[tokio::test(start_paused = true)]
async fn b16_every_caller_dropped_with_cancel_when_unobserved_cancels_the_flight() {
    let (stack, cache, probe, gate) = setup();
    let options = cancel_when_unobserved();
    let mut callers: Vec<_> = (0..4)
        .map(|_| Box::pin(cache.get_or_fetch_with("k", &options, probe.loader(&gate, "v"))))
        .collect();
    for caller in &mut callers {
        assert!(!poll_once(caller));
    }
    settle().await;
    assert_eq!(probe.calls.get(), 1, "the flight is in the loader");
    let doomed = probe.context(0).flight_id();

    // The last drop cancels, synchronously: the key is free before anything else runs.
    drop(callers);
    assert!(probe.token_fired(0), "the loader's token fired");
    assert_eq!(
        cache.flights_in_progress(),
        0,
        "the flight is removed at once"
    );
    let mut next = Box::pin(cache.get_or_fetch_with("k", &options, probe.loader(&gate, "new")));
    assert!(!poll_once(&mut next));
    assert_eq!(cache.flights_in_progress(), 1);
    assert_eq!(cache.stats().flights, 2, "a new flight, not the doomed one");

    settle().await;
    assert!(
        probe.was_dropped(),
        "the doomed loader's future was dropped"
    );
    assert!(
        probe.outside_work_cancelled.load(Ordering::SeqCst),
        "work the loader started elsewhere saw the token"
    );
    assert_eq!(probe.calls.get(), 2, "the new flight ran its own loader");
    assert!(!probe.token_fired(1), "the new flight is not cancelled");
    gate.open();
    let hit = next.await.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "new"));
    assert!(!hit.is_coalesced());
    assert_ne!(hit.flight_id(), Some(doomed));
    let stats = cache.stats();
    assert_eq!((stats.flights_abandoned, stats.loader_calls), (1, 2));
    settle().await;
    // Only the new flight's value was stored.
    assert_eq!(
        stack.l1.peek(&key("k")).unwrap().value().unwrap().as_str(),
        "new"
    );
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    assert_eq!(stack.codec.encodes(), 1);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 16: with `CancelWhenUnobserved`, a flight whose every caller was dropped stores
/// nothing even when its loader could have finished, and the next caller runs a new flight.
#[tokio::test(start_paused = true)]
async fn b16_a_cancelled_flight_stores_nothing() {
    let (stack, cache, probe, gate) = setup();
    let tasks = spawn_callers(&cache, "k", 3, cancel_when_unobserved(), &probe, &gate);
    settle().await;
    drop_callers(tasks).await;
    assert!(probe.token_fired(0));
    assert_eq!(cache.flights_in_progress(), 0);
    gate.open();
    assert_nothing_stored(&stack, "k").await;
    assert_eq!(cache.stats().flights_abandoned, 1);
    assert_eq!(cache.keys_in_progress(), 0);

    assert_the_next_call_loads(&cache, &probe, &gate, 2).await;
}

/// Behaviour 17: a dropped caller's future simply ends (the task reports a cancellation, no
/// error reaches anyone) and its place on the flight is released: under
/// `CancelWhenUnobserved` the flight survives while one caller remains, and is cancelled
/// exactly when the last of three dropped callers goes, so every drop was counted.
#[tokio::test(start_paused = true)]
async fn b17_a_dropped_caller_ends_alone_and_releases_its_place() {
    let (stack, cache, probe, gate) = setup();
    let options = cancel_when_unobserved();

    // Two of three dropped, the creator first: the third is unaffected.
    let mut tasks = spawn_callers(&cache, "a", 3, options, &probe, &gate);
    settle().await;
    let survivor = tasks.pop().unwrap();
    for task in tasks {
        task.abort();
        assert_cancelled(task).await;
    }
    settle().await;
    assert!(!probe.token_fired(0), "one caller still waits");
    assert_eq!(cache.flights_in_progress(), 1);
    gate.open();
    let hit = survivor.await.unwrap().unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), hit.is_coalesced()),
        (Source::Loader, "v", true)
    );
    assert_eq!(probe.calls.get(), 1);
    assert_stored(&stack, "a").await;

    // Three callers dropped one at a time: the flight is cancelled at the third drop only.
    let never = Gate::closed();
    let probe = LoaderProbe::default();
    let mut callers: Vec<_> = (0..3)
        .map(|_| Box::pin(cache.get_or_fetch_with("b", &options, probe.loader(&never, "v"))))
        .collect();
    for caller in &mut callers {
        assert!(!poll_once(caller));
    }
    settle().await;
    for remaining in (0..3).rev() {
        drop(callers.pop());
        settle().await;
        assert_eq!(
            probe.token_fired(0),
            remaining == 0,
            "{remaining} callers left"
        );
        assert_eq!(cache.flights_in_progress(), usize::from(remaining > 0));
    }
    assert_eq!(cache.stats().flights_abandoned, 1);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 17: each caller gets its own cancellation: a caller whose own hard timeout
/// expires gets `Timeout{Hard}` after its own deadline, while the other callers of the same
/// flight get the value.
#[tokio::test(start_paused = true)]
async fn b17_each_caller_gets_its_own_timeout() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let slow = |calls: Calls| {
        move |_: FetchContext<String>| async move {
            calls.bump();
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>("v".to_owned())
        }
    };
    let start = tokio::time::Instant::now();
    let patient = FetchOptions::new();
    let hasty = FetchOptions::new().hard_timeout(Duration::from_secs(1));
    let (a, b, c) = tokio::join!(
        cache.get_or_fetch_with("k", &patient, slow(calls.clone())),
        async {
            let result = cache
                .get_or_fetch_with("k", &hasty, slow(calls.clone()))
                .await;
            (result, start.elapsed())
        },
        cache.get_or_fetch_with("k", &patient, slow(calls.clone())),
    );
    let (b, b_elapsed) = b;
    assert!(matches!(
        b,
        Err(CacheError::Timeout { kind: TimeoutKind::Hard, after }) if after == Duration::from_secs(1)
    ));
    assert_eq!(b_elapsed, Duration::from_secs(1));
    assert_eq!((a.unwrap().as_str(), c.unwrap().as_str()), ("v", "v"));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(calls.get(), 1);
}

/// Postcard that panics on encode while armed: a panic in the flight outside the loader.
#[derive(Clone, Debug, Default)]
struct PanickyCodec {
    armed: Arc<AtomicBool>,
}

impl Codec<String> for PanickyCodec {
    fn id(&self) -> u8 {
        <Postcard as Codec<String>>::id(&Postcard)
    }

    fn name(&self) -> &'static str {
        "panicky"
    }

    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.armed.load(Ordering::SeqCst) {
            panic!("codec bug outside the loader");
        }
        Postcard.encode(value, out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        Postcard.decode(bytes)
    }
}

fn assert_aborted(answer: Answer) {
    assert!(
        matches!(answer, Err(CacheError::FlightAborted)),
        "expected FlightAborted, got {answer:?}"
    );
}

/// Asserts that every waiter gets `FlightAborted` without its task unwinding, promptly: no
/// virtual time passes.
async fn assert_aborted_promptly(tasks: Vec<tokio::task::JoinHandle<Answer>>) {
    let start = tokio::time::Instant::now();
    for task in tasks {
        assert_aborted(task.await.expect("no waiter task unwinds"));
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "promptly: no deadline had to pass"
    );
}

/// Behaviour 18: a panic in the flight outside the loader (here in the codec, while encoding
/// the loaded value) aborts the flight's task. Every waiter gets `FlightAborted` at once (no
/// deadline had to pass), no waiter unwinds, nothing is stored, the key is freed, and the next
/// call starts a new flight.
#[tokio::test(start_paused = true)]
async fn b18_a_panic_outside_the_loader_aborts_the_flight() {
    let stack = Stack::<String>::new();
    let codec = PanickyCodec::default();
    codec.armed.store(true, Ordering::SeqCst);
    let cache = stack.cache_with_codec(codec.clone());
    let probe = LoaderProbe::default();
    let gate = Gate::closed();
    let tasks = spawn_callers(&cache, "k", 5, FetchOptions::new(), &probe, &gate);
    settle().await;
    assert_eq!(probe.calls.get(), 1);
    gate.open();
    assert_aborted_promptly(tasks).await;
    assert_eq!(cache.flights_in_progress(), 0, "the table entry is removed");
    assert!(probe.token_fired(0));
    let stats = cache.stats();
    assert_eq!((stats.flights_aborted, stats.loader_panics), (1, 0));
    assert!(stack.l1.peek(&key("k")).is_none());
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(cache.keys_in_progress(), 0);

    codec.armed.store(false, Ordering::SeqCst);
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), probe.loader(&gate, "v"))
        .await
        .unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), hit.is_coalesced()),
        (Source::Loader, "v", false)
    );
    assert_ne!(hit.flight_id(), Some(probe.context(0).flight_id()));
    assert_eq!((probe.calls.get(), cache.stats().flights), (2, 2));
    assert_stored(&stack, "k").await;
}

/// Two current-thread runtimes with paused clocks: one for the callers, one for the flights
/// (`CacheBuilder::runtime`), both driven from the test's thread, so the test decides when the
/// flight runtime runs and when it shuts down.
fn runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let build = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    (build(), build())
}

/// What a flight-runtime test starts from: the callers' and the flights' runtimes (see
/// [`runtimes`]), a stack, a probe for its loaders and their gate (closed).
fn runtime_setup() -> (
    tokio::runtime::Runtime,
    tokio::runtime::Runtime,
    Stack<String>,
    LoaderProbe,
    Gate,
) {
    let (callers_rt, flights_rt) = runtimes();
    let stack = Stack::<String>::new();
    (
        callers_rt,
        flights_rt,
        stack,
        LoaderProbe::default(),
        Gate::closed(),
    )
}

/// Builds `builder`'s cache with its flights on the runtime `rt`.
fn flights_on(rt: &tokio::runtime::Runtime, builder: CacheBuilder<String>) -> Cache<String> {
    builder.runtime(rt.handle().clone()).build()
}

/// Spawns `n` callers of "k" on the runtime `rt`, and lets them reach the flight.
fn spawn_callers_on(
    rt: &tokio::runtime::Runtime,
    cache: &Cache<String>,
    n: usize,
    probe: &LoaderProbe,
    gate: &Gate,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    rt.block_on(async {
        let tasks = spawn_callers(cache, "k", n, FetchOptions::new(), probe, gate);
        settle().await;
        tasks
    })
}

/// Behaviour 18: the runtime a flight runs on shuts down while the flight is in its loader.
/// The loader's future is dropped and its token fires; every waiter (on another runtime) gets
/// `FlightAborted` at once, and the table entry is removed.
#[test]
fn b18_runtime_shutdown_aborts_a_running_flight() {
    let (callers_rt, flights_rt, stack, probe, gate) = runtime_setup();
    let cache = flights_on(&flights_rt, stack.tiered_builder());
    let tasks = spawn_callers_on(&callers_rt, &cache, 5, &probe, &gate);
    assert_eq!(probe.calls.get(), 0, "the flight runtime has not run yet");
    flights_rt.block_on(settle());
    assert_eq!(probe.calls.get(), 1, "the flight is in the loader");
    assert_eq!(cache.flights_in_progress(), 1);

    drop(flights_rt);
    assert!(probe.was_dropped(), "the loader's future was dropped");
    assert!(probe.token_fired(0));
    assert_eq!(cache.flights_in_progress(), 0, "the table entry is removed");

    callers_rt.block_on(async {
        assert_aborted_promptly(tasks).await;
        settle().await;
    });
    assert_eq!(cache.stats().flights_aborted, 1);
    assert!(stack.l1.peek(&key("k")).is_none());
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 18: the runtime a flight was spawned on shuts down before the flight's task was
/// ever polled. The flight is aborted all the same: its waiters get `FlightAborted` at once
/// and the key is freed (it must not stay blocked by a flight that will never run).
#[test]
fn b18_a_flight_dropped_before_its_first_poll_is_aborted_too() {
    let (callers_rt, flights_rt, stack, probe, gate) = runtime_setup();
    let cache = flights_on(&flights_rt, stack.builder().l2(stack.l2.clone()));
    let tasks = spawn_callers_on(&callers_rt, &cache, 3, &probe, &gate);
    assert_eq!(cache.flights_in_progress(), 1);
    // The flight's task is queued on the flight runtime but never polled.
    drop(flights_rt);
    callers_rt.block_on(assert_aborted_promptly(tasks));
    assert_eq!(probe.calls.get(), 0);
    assert_eq!(cache.flights_in_progress(), 0, "the key is free again");

    // Later calls: the flight runtime is gone, so they cannot load, but they must fail at once
    // instead of joining or leaving a flight that never runs.
    callers_rt.block_on(async {
        let start = tokio::time::Instant::now();
        let answer = cache
            .get_or_fetch_with("k", &FetchOptions::new(), probe.loader(&gate, "v"))
            .await;
        assert!(answer.is_err());
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no hang to the hard timeout"
        );
    });
    assert_eq!(cache.flights_in_progress(), 0, "no residue");
}

/// Behaviour 19: a flight completes even though the task that created it never polls its
/// call again: `select!` polls `get_or_fetch` once and goes on with something else. Another
/// caller gets the value meanwhile, the value is stored, and the abandoned-but-alive call
/// still gets the result when it is finally polled.
#[tokio::test(start_paused = true)]
async fn b19_a_flight_completes_while_its_creator_is_not_polled() {
    let (stack, cache, probe, gate) = setup();
    let options = FetchOptions::new();
    let mut creator = Box::pin(cache.get_or_fetch_with("k", &options, probe.loader(&gate, "v")));
    tokio::select! {
        biased;
        _ = &mut creator => panic!("the loader waits for the gate"),
        () = tokio::time::sleep(Duration::from_millis(1)) => {}
    }
    // From here on, `creator` is alive but never polled until the end.
    assert_eq!(
        probe.calls.get(),
        1,
        "the flight runs without its creator being polled"
    );
    let joiner = spawn_caller(&cache, "k", FetchOptions::new(), &probe, &gate);
    settle().await;
    gate.open();
    let joined = joiner.await.unwrap().unwrap();
    assert_eq!(
        (joined.source(), joined.as_str(), joined.is_coalesced()),
        (Source::Loader, "v", true)
    );
    assert_stored(&stack, "k").await;
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(
        cache.try_get_local("k").map(|h| h.as_str().to_owned()),
        Some("v".to_owned())
    );

    let created = creator.await.unwrap();
    assert_eq!(
        (created.source(), created.is_coalesced()),
        (Source::Loader, false)
    );
    assert!(Arc::ptr_eq(created.value(), joined.value()));
    assert_eq!(probe.calls.get(), 1);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 19: two `get_or_fetch` calls on one key joined with `join!` in the same task
/// (with a third branch opening the loader's gate) complete: one flight, one loader call, the
/// same value for both, under both abandon policies.
#[tokio::test(start_paused = true)]
async fn b19_two_calls_for_one_key_joined_in_one_task() {
    for options in [FetchOptions::new(), cancel_when_unobserved()] {
        let (_stack, cache, probe, gate) = setup();
        let (a, b, ()) = tokio::join!(
            cache.get_or_fetch_with("k", &options, probe.loader(&gate, "v")),
            cache.get_or_fetch_with("k", &options, probe.loader(&gate, "w")),
            async {
                settle().await;
                gate.open();
            },
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.as_str(), a.is_coalesced()), ("v", false));
        assert_eq!((b.as_str(), b.is_coalesced()), ("v", true));
        assert!(Arc::ptr_eq(a.value(), b.value()));
        assert_eq!(probe.calls.get(), 1);
        assert_eq!(cache.stats().flights, 1);

        // Without a gate too: the loader answers at once.
        let (c, d) = tokio::join!(
            cache.get_or_fetch("fast", || async { Ok::<_, std::io::Error>("c".to_owned()) }),
            cache.get_or_fetch("fast", || async { Ok::<_, std::io::Error>("d".to_owned()) }),
        );
        let (c, d) = (c.unwrap(), d.unwrap());
        assert!(Arc::ptr_eq(c.value(), d.value()));
        assert_eq!(c.as_str(), "c");
        assert_eq!(cache.stats().flights, 2);
        settle().await;
        assert_eq!(cache.keys_in_progress(), 0);
    }
}

/// A tiny deterministic PRNG (SplitMix64), for the random-drop matrix.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// Drops a spawned caller (aborts its task) and lets the runtime process it.
async fn drop_caller(task: tokio::task::JoinHandle<Answer>) {
    task.abort();
    assert_cancelled(task).await;
    settle().await;
}

/// Behaviour 14 (cancellation matrix): over 20 seeds, one random caller of a random-sized
/// burst (3-8 callers) is dropped, under a random abandon policy, either once every caller
/// joined or right after it joined (before the later callers arrived). Every other caller gets
/// the value, and the loader runs once, except in the one case where the drop leaves a
/// `CancelWhenUnobserved` flight with no caller: then that flight is cancelled, stores
/// nothing, and the later callers run exactly one new flight.
#[tokio::test(start_paused = true)]
async fn b14_matrix_a_random_caller_dropped_over_20_seeds() {
    // Which (creator dropped, policy cancels, dropped early) cases the seeds covered.
    let mut covered = std::collections::HashSet::new();
    for seed in 0..20_u64 {
        let mut rng = SplitMix64(seed);
        let n = 3 + rng.below(6);
        let victim = rng.below(n);
        let cancel = rng.below(2) == 1;
        let early = rng.below(2) == 1;
        let options = if cancel {
            cancel_when_unobserved()
        } else {
            FetchOptions::new()
        };
        let case =
            format!("seed {seed}: {n} callers, victim {victim}, cancel {cancel}, early {early}");

        let (stack, cache, probe, gate) = setup();
        let mut tasks = Vec::new();
        for i in 0..n {
            tasks.push(Some(spawn_caller(&cache, "k", options, &probe, &gate)));
            settle().await;
            if early && i == victim {
                drop_caller(tasks[i].take().unwrap()).await;
            }
        }
        if !early {
            drop_caller(tasks[victim].take().unwrap()).await;
        }

        // Only dropping the creator before anyone joined leaves a flight unobserved. One
        // surviving caller led a flight, unless the creator was the one dropped.
        let restarted = cancel && early && victim == 0;
        let flights = if restarted { 2 } else { 1 };
        assert_eq!(probe.token_fired(0), restarted, "{case}");
        gate.open();
        let mut hits = Vec::new();
        for task in tasks.into_iter().flatten() {
            hits.push(task.await.unwrap().unwrap());
        }
        assert_eq!(hits.len(), n - 1, "{case}");
        assert!(hits.iter().all(|h| h.as_str() == "v"), "{case}");
        assert!(
            hits.iter().all(|h| Arc::ptr_eq(h.value(), hits[0].value())),
            "{case}"
        );
        assert_eq!(
            hits.iter().filter(|h| !h.is_coalesced()).count(),
            usize::from(victim != 0 || restarted),
            "{case}"
        );
        assert_eq!(probe.calls.get(), flights, "{case}");
        let stats = cache.stats();
        assert_eq!(stats.flights, flights as u64, "{case}");
        assert_eq!(stats.flights_abandoned, u64::from(restarted), "{case}");
        assert_eq!(stats.flights_aborted, 0, "{case}");
        assert_stored(&stack, "k").await;
        assert_eq!(stack.codec.encodes(), 1, "{case}: only one flight stored");
        assert_eq!(cache.keys_in_progress(), 0, "{case}");
        covered.insert((victim == 0, cancel, early));
    }
    assert!(
        covered.contains(&(true, true, true)),
        "the seeds cover a restarted flight"
    );
    assert!(
        covered.contains(&(true, false, false)),
        "and a dropped creator under Continue"
    );
    assert!(
        covered.len() >= 6,
        "the seeds cover most cases: {covered:?}"
    );
}

/// Behaviour 15 (cancellation matrix): a call polled exactly once (it started the flight,
/// whose task has not run yet) and then dropped, under `Continue`: the flight runs anyway,
/// stores its value, and the next call hits L1.
#[tokio::test(start_paused = true)]
async fn b15_matrix_a_call_polled_once_then_dropped_under_continue() {
    let (stack, cache, probe, gate) = setup();
    gate.open();
    let options = FetchOptions::new();
    let mut call = Box::pin(cache.get_or_fetch_with("k", &options, probe.loader(&gate, "v")));
    assert!(!poll_once(&mut call));
    assert_eq!(probe.calls.get(), 0, "the flight's task has not run yet");
    drop(call);
    assert_eq!(cache.flights_in_progress(), 1);
    settle().await;
    assert_eq!(probe.calls.get(), 1);
    assert_stored(&stack, "k").await;
    assert_eq!(cache.keys_in_progress(), 0);
    let hit = cache
        .get_or_fetch("k", || async {
            Ok::<_, std::io::Error>("other".to_owned())
        })
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v"));
}

/// Behaviour 16 (cancellation matrix): a call polled exactly once and then dropped, under
/// `CancelWhenUnobserved`: the flight is cancelled before its task ever ran, so the loader is
/// never called, nothing is stored and the key is free at once.
#[tokio::test(start_paused = true)]
async fn b16_matrix_a_call_polled_once_then_dropped_under_cancel_when_unobserved() {
    let (stack, cache, probe, gate) = setup();
    gate.open();
    let options = cancel_when_unobserved();
    let mut call = Box::pin(cache.get_or_fetch_with("k", &options, probe.loader(&gate, "v")));
    assert!(!poll_once(&mut call));
    drop(call);
    assert_eq!(cache.flights_in_progress(), 0);
    assert_nothing_stored(&stack, "k").await;
    assert_eq!(probe.calls.get(), 0, "the loader never ran");
    let stats = cache.stats();
    assert_eq!(
        (
            stats.flights,
            stats.flights_abandoned,
            stats.flights_aborted
        ),
        (1, 1, 0)
    );
    assert_eq!(cache.keys_in_progress(), 0);

    assert_the_next_call_loads(&cache, &probe, &gate, 1).await;
}

/// A write lane whose runner's task is dropped before its first poll (the runtime it was queued
/// on shut down): the lane is released. The next `set` of the key, on another runtime, runs its
/// own writes and returns, and the key leaves the table.
#[test]
fn a_write_lane_dropped_before_its_first_poll_releases_the_key() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let mut set = Box::pin(cache.set("k", "v1".to_owned()));
        assert!(!poll_once(&mut set), "the set waits for its remote writes");
        assert_eq!(cache.keys_in_progress(), 1, "its lanes are queued");
    });
    // The lanes' runners are still queued on the runtime: dropping it drops them unpolled.
    drop(first);
    assert_eq!(
        cache.keys_in_progress(),
        0,
        "the dropped runners freed their lanes"
    );
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        let set = tokio::time::timeout(MINUTE, cache.set("k", "v2".to_owned())).await;
        assert!(matches!(set, Ok(Ok(()))), "the next set completes: {set:?}");
        assert_eq!(cache.keys_in_progress(), 0);
    });
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    assert!(stack.l2.peek(&key("k")).is_some());
}

/// A write lane whose runner the offload drops without running it: the lane is released, and
/// the `set` waiting on its write gets an error at once instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn a_write_lane_the_offload_drops_unrun_fails_its_writes_and_frees_the_key() {
    let stack = Stack::<String>::new();
    let offload = ManualOffload::new();
    let cache = stack.tiered_builder().offload(offload.clone()).build();
    let mut set = Box::pin(cache.set("k", "v".to_owned()));
    assert!(!poll_once(&mut set));
    assert_eq!(offload.queued(), 2, "one runner per remote tier");
    assert_eq!(offload.discard_all(), 2);
    assert_eq!(cache.keys_in_progress(), 0, "the lanes are released");
    let answer = tokio::time::timeout(MINUTE, set).await;
    assert!(
        matches!(answer, Ok(Err(CacheError::Tier { .. }))),
        "the set fails at once: {answer:?}"
    );
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(stack.l1_value("k").as_deref(), Some("v"), "L1 holds it");
}
