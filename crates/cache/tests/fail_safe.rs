//! Read-through behaviours 22, 23 and 30-37: fail-safe (activation on a loader error, a panic or
//! the flight's time limit; the throttle; the horizon anchored to the write; never written to
//! the remote tiers; the first-time fallback; read-only stale reads; outcome reporting), the
//! soft timeout, and the scenario of an origin that fails for a stretch.
//!
//! Entry ages run on the stack's manual clock (TTL 60 s, fail-safe max 600 s, throttle 30 s
//! unless a test says otherwise); waits run on tokio's paused clock, so a deadline fires at
//! exactly its instant and elapsed virtual time is compared with `==`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use support::{
    Answer, Calls, FaultyStack, Gate, Stack, assert_stored_in_no_tier, at, hits, instant, key,
    settle,
};
use tierkit_cache::{
    Cache, CacheError, EntryMeta, FailSafeCause, FetchContext, FetchOptions, Hit, HitFreshness,
    LoaderError, LocalTier, NoJitter, Source, StaleCause, TimeoutKind,
};
use tierkit_core::{CacheValue, Op, Timestamp};
use tierkit_testkit::Fault;
use tierkit_testkit::logs::capture;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(60);
const FAIL_SAFE_MAX: Duration = Duration::from_secs(600);
const THROTTLE: Duration = Duration::from_secs(30);
const DOWN: &str = "origin down";
const WARNING: &str = "incoherent cache option normalised";

/// Fail-safe on, with the TTL, horizon and throttle of these tests.
fn fail_safe() -> FetchOptions {
    FetchOptions::new()
        .ttl(TTL)
        .fail_safe(true)
        .fail_safe_max(FAIL_SAFE_MAX)
        .fail_safe_throttle(THROTTLE)
}

/// The cache over all of `stack`'s tiers, with fail-safe on by default.
fn fail_safe_cache(stack: &Stack<String>) -> Cache<String> {
    stack.tiered_builder().defaults(fail_safe()).build()
}

/// Another node's fail-safe cache over `stack`'s remote tiers, with the clock set to `when`
/// (for that node to write there).
fn other_node_at(stack: &Stack<String>, when: Timestamp) -> Cache<String> {
    stack.clock.set(when);
    fail_safe_cache(&stack.other_node::<String>())
}

/// A stack and its fail-safe cache.
fn setup() -> (Stack<String>, Cache<String>) {
    let stack = Stack::<String>::new();
    let cache = fail_safe_cache(&stack);
    (stack, cache)
}

/// An entry's `(created_at, stale_at, expires_at)`.
fn times(meta: EntryMeta) -> (Timestamp, Timestamp, Timestamp) {
    (meta.created_at(), meta.stale_at(), meta.expires_at())
}

/// A stored value's `(created_at, stale_at, expires_at)`.
fn stored_times(value: &CacheValue) -> (Timestamp, Timestamp, Timestamp) {
    (value.created_at(), value.stale_at(), value.expires_at())
}

/// Loads `value` under `name` through the loader (so every tier stores it, at the manual
/// clock's time) and lets the remote write-back land.
async fn load(cache: &Cache<String>, name: &str, value: &'static str) {
    let hit = fetch(cache, name, instant(&Calls::default(), value))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, value));
    settle().await;
}

/// A stack and its fail-safe cache with "v1" loaded under "k", and the instant of the load.
async fn loaded() -> (Stack<String>, Cache<String>, Timestamp) {
    let (stack, cache) = setup();
    let t0 = stack.clock.now();
    load(&cache, "k", "v1").await;
    (stack, cache, t0)
}

/// [`loaded`], with the manual clock then set to `offset` after the load (from the TTL on, the
/// value is stale).
async fn loaded_then(offset: Duration) -> (Stack<String>, Cache<String>, Timestamp) {
    let (stack, cache, t0) = loaded().await;
    stack.clock.set(at(t0, offset));
    (stack, cache, t0)
}

/// `get_or_fetch_with(name, loader)` with no per-call options.
async fn fetch<F, Fut>(cache: &Cache<String>, name: &str, loader: F) -> Answer<String>
where
    F: FnOnce(FetchContext<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, io::Error>> + Send + 'static,
{
    cache
        .get_or_fetch_with(name, &FetchOptions::new(), loader)
        .await
}

/// `get_or_fetch_with_fallback(name, "fallback", loader)` with no per-call options.
async fn fetch_or_fallback<F, Fut>(cache: &Cache<String>, name: &str, loader: F) -> Answer<String>
where
    F: FnOnce(FetchContext<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, io::Error>> + Send + 'static,
{
    cache
        .get_or_fetch_with_fallback(name, &FetchOptions::new(), "fallback".to_owned(), loader)
        .await
}

/// Sets the clock to `TTL + 15 s` after `t0` (every copy of "k" written by then is stale)
/// and reads "k" with a failing loader: the fail-safe answer.
async fn fail_once_all_stale(
    stack: &Stack<String>,
    cache: &Cache<String>,
    t0: Timestamp,
    calls: &Calls,
) -> Hit<String> {
    stack.clock.set(at(t0, TTL + 15 * SECOND));
    fetch(cache, "k", failing(calls)).await.unwrap()
}

/// Asserts that L1, L2 and L3 hold `name` with the times `want`.
#[track_caller]
fn assert_times_in_every_tier(
    stack: &Stack<String>,
    name: &str,
    want: (Timestamp, Timestamp, Timestamp),
) {
    assert_eq!(times(stack.l1.peek(&key(name)).unwrap().meta()), want);
    assert_remote_times(stack, name, want);
}

/// Asserts that L2 and L3 hold `name` with the times `want`.
#[track_caller]
fn assert_remote_times(stack: &Stack<String>, name: &str, want: (Timestamp, Timestamp, Timestamp)) {
    assert_eq!(stored_times(&stack.l2.peek(&key(name)).unwrap()), want);
    assert_eq!(stored_times(&stack.l3.peek(&key(name)).unwrap()), want);
}

/// Asserts whether every tier still holds `name` at the manual clock's time (L1 through its
/// expiry-aware `get`).
#[track_caller]
fn assert_every_tier_holds(stack: &Stack<String>, name: &str, held: bool) {
    let now = stack.clock.now();
    assert_eq!(stack.l1.get(&key(name), now).is_some(), held);
    assert_eq!(stack.l2.peek(&key(name)).is_some(), held);
    assert_eq!(stack.l3.peek(&key(name)).is_some(), held);
}

/// What a fail-safe answer reports.
fn fail_safe_of(cause: FailSafeCause, throttled: bool) -> HitFreshness {
    HitFreshness::Stale(StaleCause::FailSafe { cause, throttled })
}

/// Asserts a hit's source, value and freshness.
#[track_caller]
fn assert_hit(hit: &Hit<String>, source: Source, value: &str, freshness: HitFreshness) {
    assert_eq!(
        (hit.source(), hit.as_str(), hit.freshness()),
        (source, value, freshness)
    );
}

/// Asserts a fail-safe hit: its source and value, flagged `Stale(FailSafe{cause, throttled})`.
#[track_caller]
fn assert_fail_safe(
    hit: &Hit<String>,
    source: Source,
    value: &str,
    cause: FailSafeCause,
    throttled: bool,
) {
    assert_hit(hit, source, value, fail_safe_of(cause, throttled));
}

/// Asserts a stale hit: its source and value, flagged `Stale(cause)`.
#[track_caller]
fn assert_stale(hit: &Hit<String>, source: Source, value: &str, cause: StaleCause) {
    assert_hit(hit, source, value, HitFreshness::Stale(cause));
}

/// Asserts that `hit` hid a loader panic with `message`.
#[track_caller]
fn assert_panicked(hit: &Hit<String>, message: &str) {
    assert!(
        matches!(
            hit.suppressed_error(),
            Some(CacheError::LoaderPanicked { message: m }) if &**m == message
        ),
        "{:?}",
        hit.suppressed_error()
    );
}

/// The loader error inside `error`, checked to be the failing loaders' `io::Error`.
#[track_caller]
fn origin_down(error: &CacheError) -> &LoaderError {
    let loader = error
        .loader_error()
        .unwrap_or_else(|| panic!("expected a loader error, got {error:?}"));
    assert_eq!(
        loader.downcast_ref::<io::Error>().unwrap().to_string(),
        DOWN
    );
    loader
}

/// Asserts that `error` is a timeout of `kind` after `after`.
#[track_caller]
fn assert_timeout(error: Option<&CacheError>, kind: TimeoutKind, after: Duration) {
    assert!(
        matches!(error, Some(CacheError::Timeout { kind: k, after: a }) if *k == kind && *a == after),
        "expected a {kind:?} timeout after {after:?}, got {error:?}"
    );
}

/// A boxed loader answer, so that every loader below has the same shape.
type Loaded = BoxFuture<'static, Result<String, io::Error>>;

/// A loader that counts its call and fails with [`DOWN`].
fn failing(calls: &Calls) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        Box::pin(async { Err(io::Error::other(DOWN)) })
    }
}

/// A loader that counts its call, waits for `gate` and fails with [`DOWN`].
fn failing_at(
    calls: &Calls,
    gate: &Gate,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let (calls, opened) = (calls.clone(), gate.opened());
    move |_| {
        calls.bump();
        Box::pin(async move {
            opened.await;
            Err(io::Error::other(DOWN))
        })
    }
}

async fn explode() -> Result<String, io::Error> {
    panic!("origin exploded")
}

/// A loader that counts its call and returns a future that panics.
fn panicking(
    calls: &Calls,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        Box::pin(explode())
    }
}

/// A loader that counts its call and panics before returning a future.
fn panicking_early(
    calls: &Calls,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| -> Loaded {
        calls.bump();
        panic!("panicked before the future")
    }
}

/// A loader that counts its call and answers `value` after `delay` (virtual time).
fn slow(
    calls: &Calls,
    delay: Duration,
    value: &'static str,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(value.to_owned())
        })
    }
}

/// A loader that counts its call and never answers.
fn never(calls: &Calls) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        Box::pin(std::future::pending())
    }
}

/// Spawns a `get_or_fetch_with(name, options, loader)`; the task returns the answer and the
/// instant it came.
fn spawn_call<F, Fut>(
    cache: &Cache<String>,
    name: &'static str,
    options: FetchOptions,
    loader: F,
) -> Call
where
    F: FnOnce(FetchContext<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, io::Error>> + Send + 'static,
{
    let cache = cache.clone();
    tokio::spawn(async move {
        let answer = cache.get_or_fetch_with(name, &options, loader).await;
        (answer, Instant::now())
    })
}

/// A spawned call: its answer and the instant it came.
type Call = JoinHandle<(Answer<String>, Instant)>;

/// Spawns the starter of a flight on "k" (hard timeout 100 ms, background cap `cap`, loader
/// `starter`), then a caller joining it (hard timeout 1 s, loader `joiner`).
fn spawn_capped_flight<S, SF, J, JF>(
    cache: &Cache<String>,
    cap: Duration,
    starter: S,
    joiner: J,
) -> (Call, Call)
where
    S: FnOnce(FetchContext<String>) -> SF + Send + 'static,
    SF: Future<Output = Result<String, io::Error>> + Send + 'static,
    J: FnOnce(FetchContext<String>) -> JF + Send + 'static,
    JF: Future<Output = Result<String, io::Error>> + Send + 'static,
{
    let options = FetchOptions::new()
        .hard_timeout(100 * MS)
        .background_cap(cap);
    let starter = spawn_call(cache, "k", options, starter);
    let joiner = spawn_call(cache, "k", FetchOptions::new().hard_timeout(SECOND), joiner);
    (starter, joiner)
}

/// An origin the test turns down and up: its loader fails with [`DOWN`] while it is down,
/// and answers its current value otherwise. Counts every call.
#[derive(Clone, Default)]
struct Origin {
    calls: Calls,
    value: Arc<Mutex<Option<&'static str>>>,
}

impl Origin {
    fn up(&self, value: &'static str) {
        *self.value.lock().unwrap() = Some(value);
    }

    fn down(&self) {
        *self.value.lock().unwrap() = None;
    }

    fn loader(&self) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
        let origin = self.clone();
        move |_| {
            origin.calls.bump();
            let answer = match *origin.value.lock().unwrap() {
                Some(value) => Ok(value.to_owned()),
                None => Err(io::Error::other(DOWN)),
            };
            Box::pin(std::future::ready(answer))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour 22: a panic is a fail-safe trigger.
// ---------------------------------------------------------------------------------------------

/// Behaviour 22: with fail-safe on and a stale value, a loader panic (inside its future, or in
/// the closure before it returns one) answers the stale value flagged
/// `Stale(FailSafe{cause: LoaderPanic})`, with the panic as the suppressed error. The activation
/// is counted under the panic cause and throttled like any other; nothing is written remotely.
#[tokio::test(start_paused = true)]
async fn b22_a_loader_panic_triggers_fail_safe() {
    let (stack, cache, _) = loaded_then(TTL + SECOND).await;
    let calls = Calls::default();

    let hit = fetch(&cache, "k", panicking(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderPanic, false);
    assert_panicked(&hit, "origin exploded");
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.loader_panics), (2, 1));
    assert_eq!(stats.fail_safe_activations, [0, 1, 0]);

    // Within the throttle: the same cause, throttled, no loader call.
    let hit = fetch(&cache, "k", panicking(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderPanic, true);
    assert_eq!(calls.get(), 1);

    // After the throttle: a panic in the closure itself, before it returns a future.
    stack.clock.advance(THROTTLE);
    let hit = fetch(&cache, "k", panicking_early(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderPanic, false);
    assert_panicked(&hit, "panicked before the future");
    assert_eq!(calls.get(), 2);
    let stats = cache.stats();
    assert_eq!(stats.loader_panics, 2);
    assert_eq!(stats.fail_safe_activations, [0, 2, 0]);

    settle().await;
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (1, 1),
        "only the first load was written remotely"
    );
    assert_eq!(cache.flights_in_progress(), 0);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 23: the soft timeout, only when serving stale is possible.
// ---------------------------------------------------------------------------------------------

/// The options of the soft-timeout tests: soft 100 ms, hard 1 s.
fn soft_and_hard() -> FetchOptions {
    FetchOptions::new()
        .soft_timeout(100 * MS)
        .hard_timeout(SECOND)
}

/// Behaviour 23 (own stale L1 entry): with fail-safe on and a stale L1 entry, a caller whose
/// loader is slow gets the stale value at exactly its soft timeout, flagged
/// `Stale(SoftTimeout)`; the flight keeps running and, when the loader answers, stores its
/// value in every tier.
#[tokio::test(start_paused = true)]
async fn b23_soft_timeout_serves_the_own_stale_l1_entry_while_the_flight_goes_on() {
    let (stack, cache, t0) = loaded().await;
    let t1 = at(t0, TTL + SECOND);
    stack.clock.set(t1);
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &soft_and_hard(), slow(&calls, 300 * MS, "v2"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 100 * MS, "released at its soft timeout");
    assert_stale(&hit, Source::L1, "v1", StaleCause::SoftTimeout);
    assert!(hit.suppressed_error().is_none());
    assert_eq!(hit.elapsed(), 100 * MS);
    assert_eq!(cache.flights_in_progress(), 1, "the flight goes on");
    let stats = cache.stats();
    assert_eq!(stats.soft_timeouts, 1);
    assert_eq!(
        stats.fail_safe_activations,
        [0, 0, 0],
        "a soft timeout throttles nothing"
    );

    // The loader answers at 300 ms: its value is stored in every tier.
    tokio::time::sleep_until(start + 300 * MS).await;
    settle().await;
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(stack.l1_value("k"), Some("v2".to_owned()));
    let written = (t1, at(t1, TTL), at(t1, FAIL_SAFE_MAX));
    assert_remote_times(&stack, "k", written);

    let hit = cache
        .get_or_fetch_with("k", &soft_and_hard(), failing(&calls))
        .await
        .unwrap();
    assert_hit(&hit, Source::L1, "v2", HitFreshness::Fresh);
    assert_eq!(calls.get(), 1);
}

/// Behaviour 23 (a stale entry a tier published through the flight): a node whose L1 is empty
/// gets, at its soft timeout, the stale value the flight found in L2 (`Source::L2`), and the
/// flight then stores the loader's value.
#[tokio::test(start_paused = true)]
async fn b23_soft_timeout_serves_a_stale_entry_the_flight_found_in_a_tier() {
    let stack = Stack::<String>::new();
    let t0 = stack.clock.now();
    load(&fail_safe_cache(&stack), "k", "v1").await;
    let node = stack.other_node::<String>();
    let cache = fail_safe_cache(&node);
    stack.clock.set(at(t0, TTL + SECOND));
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &soft_and_hard(), slow(&calls, 300 * MS, "v2"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_stale(&hit, Source::L2, "v1", StaleCause::SoftTimeout);
    assert_eq!(times(hit.meta()).0, t0, "the entry other node wrote");
    assert!(node.l1.peek(&key("k")).is_none(), "nothing stored yet");
    assert_eq!(cache.stats().soft_timeouts, 1);

    tokio::time::sleep_until(start + 300 * MS).await;
    settle().await;
    assert_eq!(node.l1_value("k"), Some("v2".to_owned()));
    assert_eq!(
        stack.l2.calls().set,
        2,
        "the first load, then the flight's value"
    );
    assert_eq!(stack.l3.calls().set, 2);
    assert_eq!(calls.get(), 1);
}

/// Behaviour 23 (a per-call fallback): with no stale value anywhere, a caller's own fallback is
/// served at its soft timeout (`Source::Fallback`, `Stale(SoftTimeout)`); it is never stored,
/// and the flight stores the loader's value once it answers.
#[tokio::test(start_paused = true)]
async fn b23_soft_timeout_serves_the_per_call_fallback() {
    let (stack, cache) = setup();
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with_fallback(
            "k",
            &soft_and_hard(),
            "fallback".to_owned(),
            slow(&calls, 300 * MS, "v2"),
        )
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 100 * MS);
    assert_stale(&hit, Source::Fallback, "fallback", StaleCause::SoftTimeout);
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!(cache.flights_in_progress(), 1);

    tokio::time::sleep_until(start + 300 * MS).await;
    settle().await;
    assert_eq!(stack.l1_value("k"), Some("v2".to_owned()));
    assert!(stack.l2.peek(&key("k")).is_some());
    assert!(stack.l3.peek(&key("k")).is_some());
    assert_eq!(calls.get(), 1);
}

/// Behaviour 23 (the condition): without fail-safe, even with a stale L1 entry or a fallback
/// value, and with fail-safe but nothing to fall back on, the soft timeout does nothing: the
/// caller waits for its hard timeout and gets `Err(Timeout{Hard})` at exactly that instant.
#[tokio::test(start_paused = true)]
async fn b23_without_fail_safe_or_without_a_fallback_the_soft_timeout_does_nothing() {
    let (_, cache, _) = loaded_then(TTL + SECOND).await;
    let calls = Calls::default();
    let without_fail_safe = soft_and_hard().fail_safe(false);

    // Fail-safe off, a stale L1 entry within its reserve.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with("k", &without_fail_safe, never(&calls))
        .await
        .unwrap_err();
    assert_timeout(Some(&error), TimeoutKind::Hard, SECOND);
    assert_eq!(start.elapsed(), SECOND);

    // Fail-safe off, a fallback value.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with_fallback(
            "cold",
            &without_fail_safe,
            "fallback".to_owned(),
            never(&calls),
        )
        .await
        .unwrap_err();
    assert_timeout(Some(&error), TimeoutKind::Hard, SECOND);
    assert_eq!(start.elapsed(), SECOND);

    // Fail-safe on, no stale value in any tier, no fallback value.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with("colder", &soft_and_hard(), never(&calls))
        .await
        .unwrap_err();
    assert_timeout(Some(&error), TimeoutKind::Hard, SECOND);
    assert_eq!(start.elapsed(), SECOND);

    assert_eq!(calls.get(), 3);
    assert_eq!(cache.stats().soft_timeouts, 0);
}

/// Behaviour 23 (a fallback the flight publishes after the soft deadline): L2 answers its
/// stale entry only at 200 ms, after the caller's 100 ms soft timeout. Serving stale becomes
/// possible then, so the caller should get it then (`Stale(SoftTimeout)`, as the decision
/// diagram's `select` does), not wait for its hard timeout.
#[tokio::test(start_paused = true)]
async fn b23_a_fallback_published_after_the_soft_deadline_is_served_when_it_arrives() {
    let faulty = FaultyStack::<String>::new();
    let stack = &faulty.stack;
    let t0 = stack.clock.now();
    load(&fail_safe_cache(stack), "k", "v1").await;
    let node = stack.other_node::<String>();
    let cache = node
        .builder()
        .l2(faulty.l2.clone())
        .l3(faulty.l3.clone())
        .defaults(fail_safe())
        .build();
    faulty.l2.push(Op::Get, Fault::Delay(200 * MS));
    stack.clock.set(at(t0, TTL + SECOND));
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &soft_and_hard(), never(&calls))
        .await
        .unwrap();
    assert_stale(&hit, Source::L2, "v1", StaleCause::SoftTimeout);
    assert_eq!(
        start.elapsed(),
        200 * MS,
        "served once the stale entry is known, not at the hard timeout"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour 30: envelope times.
// ---------------------------------------------------------------------------------------------

/// Behaviour 30: a loaded value carries `created_at`, `stale_at = created_at + ttl` and
/// `expires_at = created_at + max(fail_safe_max, ttl)` in its answer, in L1 and in both remote
/// tiers; every tier keeps it until exactly `expires_at`.
#[tokio::test(start_paused = true)]
async fn b30_every_tier_stores_the_same_envelope_times() {
    let (stack, cache) = setup();
    let t0 = stack.clock.now();
    let hit = fetch(&cache, "k", instant(&Calls::default(), "v1"))
        .await
        .unwrap();
    settle().await;
    let want = (t0, at(t0, TTL), at(t0, FAIL_SAFE_MAX));
    assert_eq!(times(hit.meta()), want);
    let local = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(times(local.meta()), want);
    assert_eq!(
        local.state().fresh_until(),
        at(t0, TTL),
        "no jitter here: L1 freshness ends at stale_at"
    );
    assert_remote_times(&stack, "k", want);

    // A TTL above fail_safe_max: expires_at is created_at + ttl.
    let long = FetchOptions::new().ttl(FAIL_SAFE_MAX + TTL);
    let hit = cache
        .get_or_fetch_with("long", &long, instant(&Calls::default(), "v"))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        times(hit.meta()),
        (t0, at(t0, FAIL_SAFE_MAX + TTL), at(t0, FAIL_SAFE_MAX + TTL))
    );

    // Physical life: every tier holds the entry until expires_at, and not at it.
    stack.clock.set(at(t0, FAIL_SAFE_MAX - MS));
    assert_every_tier_holds(&stack, "k", true);
    stack.clock.set(at(t0, FAIL_SAFE_MAX));
    assert_every_tier_holds(&stack, "k", false);
}

/// Behaviour 30 (normalisation): `fail_safe_max` below the TTL is raised to the TTL, so the
/// entry expires at `stale_at` in every tier (no reserve: a failing loader then gets its
/// error), and a warning is logged once per distinct configuration, whether it comes from a
/// call or from the handle's defaults.
#[tokio::test(start_paused = true)]
async fn b30_fail_safe_max_below_the_ttl_is_raised_to_the_ttl_with_one_warning() {
    let logs = capture(tracing::Level::WARN);
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let t0 = stack.clock.now();
    let incoherent = FetchOptions::new()
        .ttl(TTL)
        .fail_safe(true)
        .fail_safe_max(Duration::from_secs(10));
    let calls = Calls::default();

    for name in ["a", "b", "c"] {
        let hit = cache
            .get_or_fetch_with(name, &incoherent, instant(&calls, "v"))
            .await
            .unwrap();
        assert_eq!(times(hit.meta()), (t0, at(t0, TTL), at(t0, TTL)));
    }
    settle().await;
    let want = (t0, at(t0, TTL), at(t0, TTL));
    assert_times_in_every_tier(&stack, "a", want);
    logs.assert_lines(1, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "fail_safe_max", "configured=10s", "used=60s"]);

    // No reserve past the TTL: at stale_at the value is gone, and a failing loader fails.
    stack.clock.set(at(t0, TTL));
    let error = cache
        .get_or_fetch_with("a", &incoherent, failing(&calls))
        .await
        .unwrap_err();
    origin_down(&error);

    // Incoherent handle defaults: warned when that cache is built, not again on its calls.
    let with_defaults = stack.builder().defaults(incoherent).build();
    logs.assert_lines(2, &[WARNING, "fail_safe_max"]);
    fetch(&with_defaults, "d", instant(&calls, "v"))
        .await
        .unwrap();
    with_defaults
        .get_or_fetch_with("e", &incoherent, instant(&calls, "v"))
        .await
        .unwrap();
    logs.assert_lines(2, &[WARNING]);
}

/// Behaviours 30 and 34 with L1 jitter: `expires_at` is `created_at + max(fail_safe_max, ttl)`
/// in every tier whatever `jitter_max` is (jitter never extends a value past its
/// `expires_at`), so no stale value is served after `created_at + fail_safe_max`. Here
/// `fail_safe_max` leaves 1 s of reserve and `jitter_max` is 3 s (drawn as zero).
#[tokio::test(start_paused = true)]
async fn b30_jitter_room_never_moves_expires_at_past_the_fail_safe_horizon() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .jitter(NoJitter)
        .defaults(
            fail_safe()
                .fail_safe_max(TTL + SECOND)
                .jitter_max(3 * SECOND),
        )
        .build();
    let t0 = stack.clock.now();
    let hit = fetch(&cache, "k", instant(&Calls::default(), "v1"))
        .await
        .unwrap();
    settle().await;
    let want = (t0, at(t0, TTL), at(t0, TTL + SECOND));
    assert_eq!(times(hit.meta()), want);
    assert_remote_times(&stack, "k", want);

    // Past the horizon: the loader's error, not the stale value.
    stack.clock.set(at(t0, TTL + 2 * SECOND));
    let calls = Calls::default();
    let answer = fetch(&cache, "k", failing(&calls)).await;
    origin_down(&answer.unwrap_err());
}

// ---------------------------------------------------------------------------------------------
// Behaviour 31: activation.
// ---------------------------------------------------------------------------------------------

/// Behaviour 31 (loader error, only before `expires_at`): a failing loader with a stale value
/// in the reserve answers it flagged `FailSafe{LoaderError}` (from `stale_at` on, up to 1 ms
/// before `expires_at`); at `expires_at` there is no candidate and the caller gets the error.
#[tokio::test(start_paused = true)]
async fn b31_a_loader_error_activates_fail_safe_only_before_expires_at() {
    let (stack, cache, t0) = loaded().await;
    let calls = Calls::default();

    for offset in [TTL, FAIL_SAFE_MAX - MS] {
        stack.clock.set(at(t0, offset));
        let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
        assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, false);
        origin_down(hit.suppressed_error().unwrap());
    }

    stack.clock.set(at(t0, FAIL_SAFE_MAX));
    let error = fetch(&cache, "k", failing(&calls)).await.unwrap_err();
    origin_down(&error);
    assert_eq!(calls.get(), 3);
    let stats = cache.stats();
    assert_eq!(stats.loader_errors, 3);
    assert_eq!(stats.fail_safe_activations, [2, 0, 0]);
}

/// Behaviour 31 (the newest candidate wins): L1 holds v1 (written at t0) and another node
/// wrote v2 to L2 and L3 at t0 + 10 s. When both are stale and the loader fails, fail-safe
/// serves v2 from L2 and L1 keeps v2 for the throttle.
#[tokio::test(start_paused = true)]
async fn b31_a_newer_stale_entry_in_l2_wins_over_the_stale_l1_entry() {
    let (stack, cache, t0) = loaded().await;
    other_node_at(&stack, at(t0, 10 * SECOND))
        .set("k", "v2".to_owned())
        .await
        .unwrap();
    let calls = Calls::default();

    let hit = fail_once_all_stale(&stack, &cache, t0, &calls).await;
    assert_fail_safe(&hit, Source::L2, "v2", FailSafeCause::LoaderError, false);
    let t1 = at(t0, 10 * SECOND);
    assert_eq!(times(hit.meta()), (t1, at(t1, TTL), at(t1, FAIL_SAFE_MAX)));
    assert_eq!(stack.l1_value("k"), Some("v2".to_owned()));
    assert_eq!(stack.l1.peek(&key("k")).unwrap().meta().created_at(), t1);

    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v2", FailSafeCause::LoaderError, true);
    assert_eq!(calls.get(), 1);
}

/// Behaviour 31 (the newest candidate wins, across both remote tiers): L1 and L2 hold v1
/// (written at t0) and another node wrote v3 to L3 only at t0 + 10 s: fail-safe serves L3's v3.
#[tokio::test(start_paused = true)]
async fn b31_a_newer_stale_entry_in_l3_wins_over_l2_and_l1() {
    let (stack, cache, t0) = loaded().await;
    stack.clock.set(at(t0, 10 * SECOND));
    let l3_writer = stack.builder_over(false, false, true).defaults(fail_safe());
    l3_writer.build().set("k", "v3".to_owned()).await.unwrap();
    assert_eq!(stack.l2.peek(&key("k")).unwrap().created_at(), t0);
    let calls = Calls::default();

    let hit = fail_once_all_stale(&stack, &cache, t0, &calls).await;
    assert_fail_safe(&hit, Source::L3, "v3", FailSafeCause::LoaderError, false);
    assert_eq!(hit.meta().created_at(), at(t0, 10 * SECOND));
    assert_eq!(stack.l1_value("k"), Some("v3".to_owned()));
}

/// Behaviour 31 (the newest candidate wins, the other way round): L1 holds v2 (set at
/// t0 + 10 s, in L1 only) while L2 and L3 hold v1 from t0: fail-safe serves L1's v2.
#[tokio::test(start_paused = true)]
async fn b31_a_newer_stale_l1_entry_wins_over_an_older_one_in_l2() {
    let (stack, cache, t0) = loaded_then(10 * SECOND).await;
    let l1_writer = stack.builder_over(true, false, false).defaults(fail_safe());
    l1_writer.build().set("k", "v2".to_owned()).await.unwrap();
    assert_eq!(stack.l2.peek(&key("k")).unwrap().created_at(), t0);
    let calls = Calls::default();

    let hit = fail_once_all_stale(&stack, &cache, t0, &calls).await;
    assert_fail_safe(&hit, Source::L1, "v2", FailSafeCause::LoaderError, false);
    assert_eq!(hit.meta().created_at(), at(t0, 10 * SECOND));
    assert_eq!(stack.l2.calls().get, 2, "L2 was read (and found older)");
}

/// Behaviour 31 (timeouts): with fail-safe and a stale value, a caller's hard timeout answers
/// the stale value flagged `Stale(HardTimeout)` instead of `Err(Timeout)`, and the flight's
/// background cap is an activation (`FailSafe{Timeout}`): a caller still waiting then gets the
/// stale value, L1 keeps it for the throttle, and nothing is stored remotely.
#[tokio::test(start_paused = true)]
async fn b31_the_hard_timeout_serves_stale_and_the_background_cap_activates_fail_safe() {
    let (stack, cache, _) = loaded_then(TTL + SECOND).await;
    let calls = Calls::default();

    let start = Instant::now();
    let (starter, joiner) = spawn_capped_flight(&cache, 400 * MS, never(&calls), failing(&calls));

    let (answer, when) = starter.await.unwrap();
    let hit = answer.unwrap();
    assert_eq!(when, start + 100 * MS);
    assert_stale(&hit, Source::L1, "v1", StaleCause::HardTimeout);
    assert_timeout(hit.suppressed_error(), TimeoutKind::Hard, 100 * MS);

    let (answer, when) = joiner.await.unwrap();
    let hit = answer.unwrap();
    assert_eq!(when, start + 400 * MS, "answered by the background cap");
    assert!(hit.is_coalesced());
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::Timeout, false);
    assert_timeout(hit.suppressed_error(), TimeoutKind::BackgroundCap, 400 * MS);
    let stats = cache.stats();
    assert_eq!(stats.flights_capped, 1);
    assert_eq!(stats.fail_safe_activations, [0, 0, 1]);

    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::Timeout, true);
    assert_eq!(
        calls.get(),
        1,
        "the joiner's and the last loaders never ran"
    );
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));

    // Without fail-safe the same hard timeout is an error.
    let error = cache
        .get_or_fetch_with(
            "other",
            &FetchOptions::new().hard_timeout(100 * MS).fail_safe(false),
            never(&calls),
        )
        .await
        .unwrap_err();
    assert_timeout(Some(&error), TimeoutKind::Hard, 100 * MS);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 32: the throttle.
// ---------------------------------------------------------------------------------------------

/// Behaviour 32: after an activation, for the whole throttle window, every read
/// (`get_or_fetch`, `get`, `try_get_local`) returns the stale value from L1 flagged
/// `throttled: true` without calling the loader, even one that would succeed; each is counted
/// in `throttled_serves`. The first call at the window's end calls the loader.
#[tokio::test(start_paused = true)]
async fn b32_the_throttle_serves_the_stale_value_without_calling_the_loader() {
    let (stack, cache, t0) = loaded().await;
    let calls = Calls::default();
    let activated = at(t0, TTL);
    stack.clock.set(activated);
    fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_eq!(calls.get(), 1);

    let throttled = fail_safe_of(FailSafeCause::LoaderError, true);
    for offset in [Duration::ZERO, SECOND, 15 * SECOND, THROTTLE - MS] {
        stack.clock.set(at(activated, offset));
        let hit = fetch(&cache, "k", instant(&calls, "v2")).await.unwrap();
        assert_hit(&hit, Source::L1, "v1", throttled);
        assert!(hit.suppressed_error().is_none());
        assert_eq!(hit.flight_id(), None, "no flight");
    }
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_hit(&hit, Source::L1, "v1", throttled);
    let hit = cache.try_get_local("k").unwrap();
    assert_hit(&hit, Source::L1, "v1", throttled);
    assert_eq!(calls.get(), 1, "no loader call in the window");
    let stats = cache.stats();
    assert_eq!(stats.throttled_serves, 6);
    assert_eq!(stats.loader_calls, 2);
    assert_eq!(stats.flights, 2);

    // The window's end: the loader runs again (here it succeeds).
    stack.clock.set(at(activated, THROTTLE));
    let hit = fetch(&cache, "k", instant(&calls, "v2")).await.unwrap();
    assert_hit(&hit, Source::Loader, "v2", HitFreshness::Fresh);
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 33: fail-safe values are never written to L2 or L3.
// ---------------------------------------------------------------------------------------------

/// Behaviour 33: an activation writes nothing to L2 or L3 (their set and delete counts do not
/// move, their entry keeps its original timestamps) and L1 keeps the value's `created_at`. So
/// a newer value another node writes to L2 during the throttle wins on the first L2 read after
/// the throttle, without a loader call.
#[tokio::test(start_paused = true)]
async fn b33_fail_safe_values_are_never_written_remotely() {
    let (stack, cache, t0) = loaded().await;
    let before = (stack.l2.calls(), stack.l3.calls());
    let calls = Calls::default();

    stack.clock.set(at(t0, TTL));
    for _ in 0..3 {
        fetch(&cache, "k", failing(&calls)).await.unwrap();
    }
    settle().await;
    let after = (stack.l2.calls(), stack.l3.calls());
    assert_eq!(
        (after.0.set, after.0.delete),
        (before.0.set, before.0.delete)
    );
    assert_eq!(
        (after.1.set, after.1.delete),
        (before.1.set, before.1.delete)
    );
    let original = (t0, at(t0, TTL), at(t0, FAIL_SAFE_MAX));
    assert_remote_times(&stack, "k", original);
    assert_eq!(times(stack.l1.peek(&key("k")).unwrap().meta()), original);

    // Another node writes v2 during the throttle: this node still serves v1 from its throttle.
    let written = at(t0, TTL + 10 * SECOND);
    other_node_at(&stack, written)
        .set("k", "v2".to_owned())
        .await
        .unwrap();
    stack.clock.set(at(t0, TTL + 20 * SECOND));
    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, true);

    // After the throttle: L2's newer value wins; the loader is not called.
    stack.clock.set(at(t0, TTL + THROTTLE));
    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_hit(&hit, Source::L2, "v2", HitFreshness::Fresh);
    assert_eq!(hit.meta().created_at(), written);
    assert_eq!(stack.l1_value("k"), Some("v2".to_owned()));
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 34: the horizon is anchored to the original write.
// ---------------------------------------------------------------------------------------------

/// Behaviour 34: activating every 30 s with a failing loader never moves the value's
/// `expires_at` (`created_at + fail_safe_max`): 18 activations (75 s, 105 s, ... 585 s), a
/// throttled serve 1 ms before `expires_at`, and from `expires_at` on, even inside what would
/// have been the last activation's 30 s throttle, the caller gets the loader's error.
#[tokio::test(start_paused = true)]
async fn b34_no_stale_serve_after_created_at_plus_fail_safe_max() {
    let (stack, cache, t0) = loaded().await;
    let calls = Calls::default();
    let original = (t0, at(t0, TTL), at(t0, FAIL_SAFE_MAX));

    let mut activations = 0;
    let mut offset = TTL + 15 * SECOND;
    while offset < FAIL_SAFE_MAX {
        stack.clock.set(at(t0, offset));
        let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
        assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, false);
        assert_eq!(times(hit.meta()), original, "at {offset:?}");
        activations += 1;
        assert_eq!(calls.get(), activations);
        offset += THROTTLE;
    }
    assert_eq!(activations, 18);

    // The last activation (at 585 s) serves from its throttle up to expires_at, not 615 s.
    stack.clock.set(at(t0, FAIL_SAFE_MAX - MS));
    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, true);
    assert_eq!(calls.get(), 18);

    for offset in [
        FAIL_SAFE_MAX,
        FAIL_SAFE_MAX + 10 * SECOND,
        FAIL_SAFE_MAX + THROTTLE,
    ] {
        stack.clock.set(at(t0, offset));
        let error = fetch(&cache, "k", failing(&calls)).await.unwrap_err();
        origin_down(&error);
    }
    assert_eq!(
        calls.get(),
        21,
        "every call past the horizon runs the loader"
    );
    let stats = cache.stats();
    assert_eq!(stats.fail_safe_activations, [18, 0, 0]);
    assert_every_tier_holds(&stack, "k", false);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 35: the first-time fallback.
// ---------------------------------------------------------------------------------------------

/// Behaviour 35: with fail-safe on and no stale value anywhere, a failing (or panicking)
/// loader's caller gets its per-call fallback, `Source::Fallback`, flagged
/// `Stale(FailSafe{..})` with the error suppressed. The fallback is stored in no tier and
/// starts no throttle (the next call runs the loader). Without fail-safe it is not used, and a
/// stale value is preferred over it.
#[tokio::test(start_paused = true)]
async fn b35_the_per_call_fallback_is_served_when_no_candidate_exists() {
    let (stack, cache) = setup();
    let calls = Calls::default();

    let hit = fetch_or_fallback(&cache, "k", failing(&calls))
        .await
        .unwrap();
    assert_fail_safe(
        &hit,
        Source::Fallback,
        "fallback",
        FailSafeCause::LoaderError,
        false,
    );
    origin_down(hit.suppressed_error().unwrap());
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));

    // No throttle: the next call runs the loader, and without a fallback gets the error.
    let error = fetch(&cache, "k", failing(&calls)).await.unwrap_err();
    origin_down(&error);
    assert_eq!(calls.get(), 2);

    // A panic, likewise.
    let hit = fetch_or_fallback(&cache, "k", panicking(&calls))
        .await
        .unwrap();
    assert_fail_safe(
        &hit,
        Source::Fallback,
        "fallback",
        FailSafeCause::LoaderPanic,
        false,
    );

    // Fail-safe off: the fallback is not used.
    let error = cache
        .get_or_fetch_with_fallback(
            "k",
            &FetchOptions::new().fail_safe(false),
            "fallback".to_owned(),
            failing(&calls),
        )
        .await
        .unwrap_err();
    origin_down(&error);
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!(calls.get(), 4);

    // A stale value is preferred over the fallback.
    let t0 = stack.clock.now();
    load(&cache, "warm", "v1").await;
    stack.clock.set(at(t0, TTL + SECOND));
    let hit = fetch_or_fallback(&cache, "warm", failing(&calls))
        .await
        .unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, false);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 36: read-only stale.
// ---------------------------------------------------------------------------------------------

/// Behaviour 36: `get_with(allow_stale)` returns a value past its freshness and before its
/// `expires_at`, flagged `Stale(Allowed)`: from L1 without a remote read, or from a remote
/// tier for a node whose L1 lacks it (not stored in L1 then). Without the flag, `get` returns
/// `None` when no tier holds the value fresh; past `expires_at`, `None` either way.
#[tokio::test(start_paused = true)]
async fn b36_a_read_only_stale_value_needs_allow_stale() {
    let (stack, cache, t0) = loaded().await;
    let allow_stale = FetchOptions::new().allow_stale(true);

    // Fresh: the flag changes nothing.
    let hit = cache.get_with("k", &allow_stale).await.unwrap().unwrap();
    assert_hit(&hit, Source::L1, "v1", HitFreshness::Fresh);

    stack.clock.set(at(t0, TTL + SECOND));
    let reads = (stack.l2.calls().get, stack.l3.calls().get);
    let hit = cache.get_with("k", &allow_stale).await.unwrap().unwrap();
    assert_stale(&hit, Source::L1, "v1", StaleCause::Allowed);
    assert!(hit.suppressed_error().is_none());
    assert_eq!(times(hit.meta()).0, t0);
    assert_eq!(
        (stack.l2.calls().get, stack.l3.calls().get),
        reads,
        "answered from L1"
    );

    // Without the flag: None (the remote tiers hold it stale only).
    assert!(cache.get("k").await.unwrap().is_none());
    assert!(
        cache
            .get_with("k", &FetchOptions::new().allow_stale(false))
            .await
            .unwrap()
            .is_none()
    );

    // A node whose L1 lacks the value: from L2, flagged the same, not stored in its L1.
    let node = stack.other_node::<String>();
    let other = fail_safe_cache(&node);
    let hit = other.get_with("k", &allow_stale).await.unwrap().unwrap();
    assert_stale(&hit, Source::L2, "v1", StaleCause::Allowed);
    assert!(node.l1.peek(&key("k")).is_none());
    assert!(other.get("k").await.unwrap().is_none());

    // Past expires_at: nothing, even with the flag.
    stack.clock.set(at(t0, FAIL_SAFE_MAX));
    assert!(cache.get_with("k", &allow_stale).await.unwrap().is_none());
    assert!(other.get_with("k", &allow_stale).await.unwrap().is_none());
    assert_eq!(cache.stats().loader_calls, 1, "only the first load");
}

// ---------------------------------------------------------------------------------------------
// Behaviour 37: outcome reporting.
// ---------------------------------------------------------------------------------------------

/// Behaviour 37: every fail-safe answer reports `Stale(FailSafe{cause, throttled})`. The
/// callers of one failed flight all get the same shared error from `suppressed_error()`
/// (`LoaderError::ptr_eq`, downcastable to the loader's type); a throttled serve has none.
/// `fail_safe_activations` counts per cause: loader error, panic, timeout.
#[tokio::test(start_paused = true)]
async fn b37_fail_safe_outcomes_report_the_cause_and_the_shared_error() {
    let (stack, cache, _) = loaded_then(TTL).await;
    let calls = Calls::default();

    // Loader error: five callers of one flight.
    let gate = Gate::closed();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (cache, loader) = (cache.clone(), failing_at(&calls, &gate));
            tokio::spawn(async move { fetch(&cache, "k", loader).await })
        })
        .collect();
    settle().await;
    gate.open();
    let answers = hits(tasks).await;
    assert_eq!(calls.get(), 1);
    let errors: Vec<&LoaderError> = answers
        .iter()
        .map(|hit| {
            assert_fail_safe(hit, Source::L1, "v1", FailSafeCause::LoaderError, false);
            origin_down(hit.suppressed_error().unwrap())
        })
        .collect();
    assert!(errors.iter().all(|e| LoaderError::ptr_eq(e, errors[0])));
    assert_eq!(answers.iter().filter(|hit| hit.is_coalesced()).count(), 4);
    assert_eq!(cache.stats().fail_safe_activations, [1, 0, 0]);

    let hit = fetch(&cache, "k", failing(&calls)).await.unwrap();
    assert_fail_safe(&hit, Source::L1, "v1", FailSafeCause::LoaderError, true);
    assert!(hit.suppressed_error().is_none());

    // Panic.
    stack.clock.advance(THROTTLE);
    let hit = fetch(&cache, "k", panicking(&calls)).await.unwrap();
    assert_eq!(
        hit.freshness(),
        fail_safe_of(FailSafeCause::LoaderPanic, false)
    );
    assert!(matches!(
        hit.suppressed_error(),
        Some(CacheError::LoaderPanicked { .. })
    ));
    assert_eq!(cache.stats().fail_safe_activations, [1, 1, 0]);

    // Timeout: the flight's background cap, seen by a caller that outlasts it.
    stack.clock.advance(THROTTLE);
    let start = Instant::now();
    let (starter, joiner) = spawn_capped_flight(&cache, 200 * MS, never(&calls), never(&calls));
    let (answer, _) = starter.await.unwrap();
    assert_eq!(
        answer.unwrap().freshness(),
        HitFreshness::Stale(StaleCause::HardTimeout)
    );
    let (answer, when) = joiner.await.unwrap();
    assert_eq!(when, start + 200 * MS);
    let hit = answer.unwrap();
    assert_eq!(hit.freshness(), fail_safe_of(FailSafeCause::Timeout, false));
    assert_timeout(hit.suppressed_error(), TimeoutKind::BackgroundCap, 200 * MS);
    let stats = cache.stats();
    assert_eq!(stats.fail_safe_activations, [1, 1, 1]);
    assert_eq!(stats.throttled_serves, 1);
    assert_eq!(calls.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// The scenario: an origin that fails for a stretch.
// ---------------------------------------------------------------------------------------------

/// Scenario: the origin fails from `stale_at` on, and recovers during a throttle window.
/// Reads every 5 s keep returning the last value from L1, flagged fail-safe, with exactly one
/// loader call per 30 s throttle window (the window's first read; the others are flagged
/// `throttled`). Reads after the recovery but inside the window still get the stale value
/// without a loader call; the first read after the window stores the new value in every tier.
#[tokio::test(start_paused = true)]
async fn scenario_an_origin_failing_for_a_stretch_then_recovering() {
    let (stack, cache) = setup();
    let t0 = stack.clock.now();
    let origin = Origin::default();
    origin.up("v1");
    let hit = fetch(&cache, "k", origin.loader()).await.unwrap();
    assert_hit(&hit, Source::Loader, "v1", HitFreshness::Fresh);
    settle().await;
    origin.down();

    let mut windows = 0;
    for seconds in (60..300).step_by(5) {
        if seconds == 290 {
            // Recovered inside the last window (opened at 270 s, throttled until 300 s).
            origin.up("v2");
        }
        stack.clock.set(at(t0, Duration::from_secs(seconds)));
        let hit = fetch(&cache, "k", origin.loader()).await.unwrap();
        let opens_a_window = (seconds - 60) % 30 == 0;
        windows += usize::from(opens_a_window);
        assert_fail_safe(
            &hit,
            Source::L1,
            "v1",
            FailSafeCause::LoaderError,
            !opens_a_window,
        );
        assert_eq!(origin.calls.get(), 1 + windows, "at {seconds} s");
    }
    assert_eq!(windows, 8);
    let stats = cache.stats();
    assert_eq!(stats.fail_safe_activations, [8, 0, 0]);
    assert_eq!(stats.throttled_serves, 48 - 8);
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));

    // The first read after the throttle: the new value, stored in every tier.
    let recovered = at(t0, Duration::from_secs(300));
    stack.clock.set(recovered);
    let hit = fetch(&cache, "k", origin.loader()).await.unwrap();
    assert_hit(&hit, Source::Loader, "v2", HitFreshness::Fresh);
    assert_eq!(origin.calls.get(), 10);
    settle().await;
    let written = (recovered, at(recovered, TTL), at(recovered, FAIL_SAFE_MAX));
    assert_eq!(stack.l1_value("k"), Some("v2".to_owned()));
    assert_times_in_every_tier(&stack, "k", written);
    // Another node reads the new value from L2.
    let node = stack.other_node::<String>();
    let hit = fail_safe_cache(&node).get("k").await.unwrap().unwrap();
    assert_hit(&hit, Source::L2, "v2", HitFreshness::Fresh);
    let hit = fetch(&cache, "k", origin.loader()).await.unwrap();
    assert_hit(&hit, Source::L1, "v2", HitFreshness::Fresh);
    assert_eq!(origin.calls.get(), 10);
}

/// Scenario: the origin stays down past the horizon. Reads every 5 s get the stale value,
/// flagged, with one loader call per throttle window, until `created_at + fail_safe_max`;
/// from then on not one read gets a stale value (each gets the origin's error, and there is
/// no throttle to spare the loader). When the origin recovers, the next read stores the new
/// value in every tier.
#[tokio::test(start_paused = true)]
async fn scenario_an_origin_failing_past_the_horizon() {
    let (stack, cache) = setup();
    let t0 = stack.clock.now();
    let origin = Origin::default();
    origin.up("v1");
    fetch(&cache, "k", origin.loader()).await.unwrap();
    settle().await;
    origin.down();

    let (mut stale, mut errors) = (0, 0);
    for seconds in (60..=700).step_by(5) {
        stack.clock.set(at(t0, Duration::from_secs(seconds)));
        let answer = fetch(&cache, "k", origin.loader()).await;
        if seconds < 600 {
            let hit = answer.unwrap();
            assert_eq!(hit.as_str(), "v1");
            assert!(matches!(
                hit.freshness(),
                HitFreshness::Stale(StaleCause::FailSafe { .. })
            ));
            stale += 1;
        } else {
            origin_down(&answer.unwrap_err());
            errors += 1;
        }
    }
    assert_eq!((stale, errors), (108, 21));
    // 18 windows before the horizon (60 s, 90 s, ... 570 s), then every read.
    assert_eq!(origin.calls.get(), 1 + 18 + 21);
    assert_eq!(cache.stats().fail_safe_activations, [18, 0, 0]);

    origin.up("v2");
    let recovered = at(t0, Duration::from_secs(705));
    stack.clock.set(recovered);
    let hit = fetch(&cache, "k", origin.loader()).await.unwrap();
    assert_hit(&hit, Source::Loader, "v2", HitFreshness::Fresh);
    settle().await;
    let written = (recovered, at(recovered, TTL), at(recovered, FAIL_SAFE_MAX));
    assert_times_in_every_tier(&stack, "k", written);
}
