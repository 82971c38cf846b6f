//! Read-through behaviours 45-50: what a loader answers besides a plain value (`Fetched`): a
//! TTL of the value's own, a value not to store, "absent" (negative caching), "not modified"
//! (conditional refresh), a failure without an error type, and per-tier skips; with the
//! normalisation (61) and the composition (60) of the options added with them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use support::{Answer, Calls, Gate, MINUTE, Stack, assert_stored_in_no_tier, hits, key, settle};
use tierkit_cache::{
    Cache, CacheError, EntryMeta, FailSafeCause, FetchContext, FetchOptions, Fetched, Hit,
    HitFreshness, JitterSource, LoaderError, Source, StaleCause,
};
use tierkit_core::Timestamp;
use tierkit_testkit::logs::capture;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const WARNING: &str = "incoherent cache option normalised";

/// What a test loader returns.
type Loaded = BoxFuture<'static, Result<Fetched<String>, std::io::Error>>;

/// A loader that counts its call, waits for `until`, then answers `answer(&ctx)`.
fn answering<U, A>(
    calls: &Calls,
    until: U,
    answer: A,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<U, A>
where
    U: Future<Output = ()> + Send + 'static,
    A: FnOnce(&FetchContext<String>) -> Fetched<String> + Send + 'static,
{
    let calls = calls.clone();
    move |ctx| {
        calls.bump();
        Box::pin(async move {
            until.await;
            Ok(answer(&ctx))
        })
    }
}

/// A loader that counts its call and answers `answer(&ctx)` at once.
fn answer_now<A>(
    calls: &Calls,
    answer: A,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<A>
where
    A: FnOnce(&FetchContext<String>) -> Fetched<String> + Send + 'static,
{
    answering(calls, std::future::ready(()), answer)
}

/// A loader that counts its call and answers the plain value `value` at once.
fn value_now(
    calls: &Calls,
    value: &str,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let value = value.to_owned();
    answer_now(calls, move |_| Fetched::value(value))
}

/// A loader that counts its call and fails with an error value.
fn failing(
    calls: &Calls,
    reason: &'static str,
) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        Box::pin(async move { Err(std::io::Error::other(reason)) })
    }
}

/// A loader that counts its call and never answers.
fn never(calls: &Calls) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
    answering(calls, std::future::pending(), |_| {
        unreachable!("never answers")
    })
}

/// What `FetchContext::stale` showed one loader call: the stale value and its timestamps.
type Shown = Option<(String, EntryMeta)>;

/// Records what `FetchContext::stale` showed each loader call.
#[derive(Clone, Default)]
struct StaleSeen(Arc<Mutex<Vec<Shown>>>);

impl StaleSeen {
    /// A loader that counts its call, records the stale value it was given and answers
    /// [`Fetched::not_modified`].
    fn not_modified(
        &self,
        calls: &Calls,
    ) -> impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static + use<> {
        let seen = self.clone();
        answer_now(calls, move |ctx| {
            seen.0.lock().unwrap().push(
                ctx.stale()
                    .map(|(value, meta)| (value.as_str().to_owned(), meta)),
            );
            Fetched::not_modified()
        })
    }

    fn calls(&self) -> Vec<Shown> {
        self.0.lock().unwrap().clone()
    }
}

/// Advances the clock by `after`, then reads "k" with a loader answering
/// [`Fetched::not_modified`] and lets its writes land: the read's instant, what the loader
/// was shown, and the hit.
async fn not_modified_after(
    stack: &Stack<String>,
    cache: &Cache<String>,
    calls: &Calls,
    after: Duration,
) -> (Timestamp, StaleSeen, Hit<String>) {
    stack.clock.advance(after);
    let t1 = stack.clock.now();
    let seen = StaleSeen::default();
    let hit = fetch(cache, "k", seen.not_modified(calls)).await.unwrap();
    settle().await;
    (t1, seen, hit)
}

/// Spawns a caller of `get_or_fetch_with(k, options, loader)`.
fn spawn_with<F, Fut>(
    cache: &Cache<String>,
    k: &'static str,
    options: FetchOptions,
    loader: F,
) -> JoinHandle<Answer<String>>
where
    F: FnOnce(FetchContext<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Fetched<String>, std::io::Error>> + Send + 'static,
{
    let cache = cache.clone();
    tokio::spawn(async move { cache.get_or_fetch_with(k, &options, loader).await })
}

/// Spawns `n` callers of `get_or_fetch_with(k)`, each with a loader that counts its call, waits
/// for `gate` and answers `answer(&ctx)` (only the flight's starter's loader runs).
fn spawn_gated<A>(
    cache: &Cache<String>,
    k: &'static str,
    n: usize,
    calls: &Calls,
    gate: &Gate,
    answer: A,
) -> Vec<JoinHandle<Answer<String>>>
where
    A: FnOnce(&FetchContext<String>) -> Fetched<String> + Clone + Send + 'static,
{
    (0..n)
        .map(|_| {
            let loader = answering(calls, gate.opened(), answer.clone());
            spawn_with(cache, k, FetchOptions::new(), loader)
        })
        .collect()
}

/// `get_or_fetch_with(k, loader)` with no per-call options.
async fn fetch<F, Fut>(cache: &Cache<String>, k: &str, loader: F) -> Answer<String>
where
    F: FnOnce(FetchContext<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Fetched<String>, std::io::Error>> + Send + 'static,
{
    cache
        .get_or_fetch_with(k, &FetchOptions::new(), loader)
        .await
}

/// A stack, the cache `build` makes over it, and a loader call counter.
fn setup(
    build: impl FnOnce(&Stack<String>) -> Cache<String>,
) -> (Stack<String>, Cache<String>, Calls) {
    let stack = Stack::<String>::new();
    let cache = build(&stack);
    (stack, cache, Calls::default())
}

/// What a hit answered: its source, value and freshness.
fn answered(hit: &Hit<String>) -> (Source, &str, HitFreshness) {
    (hit.source(), hit.as_str(), hit.freshness())
}

/// Spawns a caller of `get(k)` (no loader).
fn spawn_get(
    cache: &Cache<String>,
    k: &'static str,
) -> JoinHandle<Result<Option<Hit<String>>, CacheError>> {
    let cache = cache.clone();
    tokio::spawn(async move { cache.get(k).await })
}

/// The timestamps remote tier `tier` (of `stack`) holds for `name`.
fn remote_meta(stack: &Stack<String>, tier: usize, name: &str) -> EntryMeta {
    let backend = if tier == 0 { &stack.l2 } else { &stack.l3 };
    EntryMeta::of(
        &backend
            .peek(&key(name))
            .unwrap_or_else(|| panic!("L{} holds {name}", tier + 2)),
    )
}

/// The timestamps L1 (of `stack`) holds for `name`.
fn l1_meta(stack: &Stack<String>, name: &str) -> EntryMeta {
    stack.l1.peek(&key(name)).expect("L1 holds the key").meta()
}

/// Asserts that L2 and L3 hold `name` with the timestamps `meta`.
#[track_caller]
fn assert_remote_meta(stack: &Stack<String>, name: &str, meta: EntryMeta) {
    assert_eq!(remote_meta(stack, 0, name), meta);
    assert_eq!(remote_meta(stack, 1, name), meta);
}

/// Asserts that L1, L2 and L3 hold `name` with the timestamps `meta`.
#[track_caller]
fn assert_meta_in_every_tier(stack: &Stack<String>, name: &str, meta: EntryMeta) {
    assert_eq!(l1_meta(stack, name), meta);
    assert_remote_meta(stack, name, meta);
}

/// The timestamps of a value renewed at `t1` with the one-minute TTL: stale a minute later,
/// expiring `expires_in` after `t1`.
fn renewed_at(t1: Timestamp, expires_in: Duration) -> EntryMeta {
    EntryMeta::new(t1, t1.saturating_add(MINUTE), t1.saturating_add(expires_in))
}

/// Asserts that `hit` carries the timestamps `renewed`, and that L1, L2 and L3 hold `value`
/// under "k" with them.
#[track_caller]
fn assert_renewed_in_every_tier(
    stack: &Stack<String>,
    hit: &Hit<String>,
    value: &str,
    renewed: EntryMeta,
) {
    assert_eq!(hit.meta(), renewed);
    assert_eq!(stack.l1_value("k").as_deref(), Some(value));
    assert_meta_in_every_tier(stack, "k", renewed);
}

/// Asserts that `error` is `CacheError::NotFound`.
#[track_caller]
fn assert_not_found(error: &CacheError) {
    assert!(matches!(error, CacheError::NotFound), "{error:?}");
}

/// Asserts that `error` is a loader error.
#[track_caller]
fn assert_loader_error(error: &CacheError) {
    assert!(matches!(error, CacheError::Loader(_)), "{error:?}");
}

/// Three `get_or_fetch` callers of "gone" and then a `get` join one flight whose loader, once
/// `gate` opens, answers [`Fetched::absent`]: asserts that every caller gets `NotFound` and
/// the `get` gets `None`, then lets the flight end.
async fn assert_absent_for_three_callers_and_a_get(
    cache: &Cache<String>,
    calls: &Calls,
    gate: &Gate,
) {
    let callers = spawn_gated(cache, "gone", 3, calls, gate, |_| Fetched::absent());
    settle().await;
    let reader = spawn_get(cache, "gone");
    settle().await;
    gate.open();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert_not_found(&error);
    }
    assert!(reader.await.unwrap().unwrap().is_none());
}

/// Fail-safe with a one-minute TTL and a ten-minute horizon, so a value stays a stale
/// candidate from minute 1 to minute 10 after its write.
fn fail_safe() -> FetchOptions {
    FetchOptions::new()
        .ttl(MINUTE)
        .fail_safe(true)
        .fail_safe_max(10 * MINUTE)
}

/// The cache over all three tiers of `stack`, with [`fail_safe`] as its defaults.
fn fail_safe_cache(stack: &Stack<String>) -> Cache<String> {
    stack.tiered_builder().defaults(fail_safe()).build()
}

/// A jitter source always drawing the same extension (at most `max`).
#[derive(Debug)]
struct FixedJitter(Duration);

impl JitterSource for FixedJitter {
    fn jitter(&self, max: Duration) -> Duration {
        self.0.min(max)
    }
}

// ---------------------------------------------------------------------------------------
// 45. TTL from the value
// ---------------------------------------------------------------------------------------

/// Behaviour 45: `Fetched::value(v).ttl(d)` overrides the resolved TTL for this write in
/// every tier: L1 and both remote tiers hold `stale_at = created_at + d`, the value is fresh
/// until then and reloaded after it; the next write without an override gets the resolved
/// TTL again.
#[tokio::test(start_paused = true)]
async fn b45_ttl_from_the_value_overrides_the_ttl_in_every_tier() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .defaults(FetchOptions::new().ttl(10 * MINUTE))
        .build();
    let calls = Calls::default();
    let t0 = stack.clock.now();

    let hit = fetch(
        &cache,
        "k",
        answer_now(&calls, |_| Fetched::value("short".to_owned()).ttl(MINUTE)),
    )
    .await
    .unwrap();
    settle().await;
    assert_eq!(
        answered(&hit),
        (Source::Loader, "short", HitFreshness::Fresh)
    );
    assert_eq!(hit.meta().created_at(), t0);
    assert_eq!(hit.meta().stale_at(), t0.saturating_add(MINUTE));
    let l1 = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(l1.meta(), hit.meta(), "L1 carries the value's TTL");
    assert_eq!(
        l1.state().fresh_until(),
        t0.saturating_add(MINUTE),
        "no jitter configured: L1 freshness ends at stale_at"
    );
    assert_eq!(remote_meta(&stack, 0, "k"), hit.meta(), "L2 too");
    assert_eq!(remote_meta(&stack, 1, "k"), hit.meta(), "L3 too");

    // Fresh until the value's TTL, not the resolved one.
    stack.clock.advance(MINUTE - SECOND);
    let hit = fetch(&cache, "k", value_now(&calls, "unused"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "short"));
    assert_eq!(calls.get(), 1);
    stack.clock.advance(SECOND);
    let t1 = stack.clock.now();
    let hit = fetch(&cache, "k", value_now(&calls, "plain"))
        .await
        .unwrap();
    settle().await;
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "plain"));
    assert_eq!(calls.get(), 2);

    // The override was for that write only.
    assert_eq!(hit.meta().stale_at(), t1.saturating_add(10 * MINUTE));
    assert_eq!(l1_meta(&stack, "k"), hit.meta());
    assert_remote_meta(&stack, "k", hit.meta());
}

/// Behaviour 45 with 30: a TTL from the value changes the freshness of its write only, while
/// the fail-safe horizon stays `expires_at = created_at + max(fail_safe_max, ttl)` computed
/// with the value's TTL (as `FetchOptions::fail_safe_max` documents): a shorter TTL keeps the
/// whole horizon, a TTL beyond the horizon leaves no reserve after it.
#[tokio::test(start_paused = true)]
async fn b45_ttl_from_the_value_keeps_the_fail_safe_horizon() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .defaults(
            FetchOptions::new()
                .ttl(10 * MINUTE)
                .fail_safe(true)
                .fail_safe_max(60 * MINUTE),
        )
        .build();
    let calls = Calls::default();
    let t0 = stack.clock.now();

    let short = fetch(
        &cache,
        "short",
        answer_now(&calls, |_| Fetched::value("s".to_owned()).ttl(MINUTE)),
    )
    .await
    .unwrap();
    let long = fetch(
        &cache,
        "long",
        answer_now(&calls, |_| Fetched::value("l".to_owned()).ttl(120 * MINUTE)),
    )
    .await
    .unwrap();
    settle().await;

    assert_eq!(short.meta().stale_at(), t0.saturating_add(MINUTE));
    assert_eq!(long.meta().stale_at(), t0.saturating_add(120 * MINUTE));
    assert_eq!(
        short.meta().expires_at(),
        t0.saturating_add(60 * MINUTE),
        "max(fail_safe_max, 1 min) = 60 min"
    );
    assert_eq!(
        long.meta().expires_at(),
        t0.saturating_add(120 * MINUTE),
        "max(fail_safe_max, 120 min) = 120 min"
    );
    for name in ["short", "long"] {
        let meta = l1_meta(&stack, name);
        assert_remote_meta(&stack, name, meta);
    }
}

/// Behaviour 45: the L1 jitter applies on top of the value's own TTL (L1 stays fresh until
/// `created_at + d + jitter`), while the remote tiers keep the exact `created_at + d`.
#[tokio::test(start_paused = true)]
async fn b45_ttl_from_the_value_gets_the_l1_jitter_on_top() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .defaults(FetchOptions::new().ttl(10 * MINUTE).jitter_max(10 * SECOND))
        .jitter(FixedJitter(4 * SECOND))
        .build();
    let calls = Calls::default();
    let t0 = stack.clock.now();

    fetch(
        &cache,
        "k",
        answer_now(&calls, |_| Fetched::value("v".to_owned()).ttl(MINUTE)),
    )
    .await
    .unwrap();
    settle().await;
    let l1 = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(l1.meta().stale_at(), t0.saturating_add(MINUTE));
    assert_eq!(
        l1.state().fresh_until(),
        t0.saturating_add(MINUTE + 4 * SECOND),
        "the value's TTL plus the L1 jitter"
    );
    assert_eq!(
        remote_meta(&stack, 0, "k").stale_at(),
        t0.saturating_add(MINUTE)
    );
    assert_eq!(
        remote_meta(&stack, 1, "k").stale_at(),
        t0.saturating_add(MINUTE)
    );

    // L1 answers within the jitter, the loader runs after it.
    stack.clock.advance(MINUTE + 3 * SECOND);
    let hit = fetch(&cache, "k", value_now(&calls, "next")).await.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v"));
    stack.clock.advance(SECOND);
    let hit = fetch(&cache, "k", value_now(&calls, "next")).await.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "next"));
    assert_eq!(calls.get(), 2);
}

/// Behaviour 45: a TTL of zero from the value means "return it, store it nowhere": every
/// caller of the flight gets it, no tier is written, and the next call runs the loader.
#[tokio::test(start_paused = true)]
async fn b45_zero_ttl_from_the_value_is_returned_but_not_stored() {
    let (stack, cache, calls) = setup(Stack::cache);
    let gate = Gate::closed();

    let callers = spawn_gated(&cache, "k", 3, &calls, &gate, |_| {
        Fetched::value("once".to_owned()).ttl(Duration::ZERO)
    });
    settle().await;
    gate.open();
    let hits = hits(callers).await;
    settle().await;
    assert_eq!(calls.get(), 1);
    for hit in &hits {
        assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "once"));
        assert!(Arc::ptr_eq(hit.value(), hits[0].value()));
    }
    assert_eq!(stack.l1.inserts(), 0);
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_stored_in_no_tier(&stack, "k");

    let hit = fetch(&cache, "k", value_now(&calls, "stored"))
        .await
        .unwrap();
    settle().await;
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "stored"));
    assert_eq!(calls.get(), 2, "nothing was stored: the loader runs again");
    assert_eq!(stack.l1_value("k").as_deref(), Some("stored"));
}

// ---------------------------------------------------------------------------------------
// 46. No store
// ---------------------------------------------------------------------------------------

/// Behaviour 46: `Fetched::no_store(v)` gives `v` to every caller already attached to the
/// flight (coalesced `get_or_fetch` callers and a joined `get`, one shared `Arc`) and writes
/// nothing anywhere; the next call, arriving after the flight, runs the loader again.
#[tokio::test(start_paused = true)]
async fn b46_no_store_reaches_only_the_callers_of_its_flight_and_writes_nothing() {
    let (stack, cache, calls) = setup(Stack::cache);
    let gate = Gate::closed();

    let callers = spawn_gated(&cache, "k", 4, &calls, &gate, |_| {
        Fetched::no_store("per-request".to_owned())
    });
    settle().await;
    let reader = spawn_get(&cache, "k");
    settle().await;
    gate.open();
    let mut hits = hits(callers).await;
    hits.push(
        reader
            .await
            .unwrap()
            .unwrap()
            .expect("the get joined the flight"),
    );
    settle().await;

    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().flights, 1);
    for hit in &hits {
        assert_eq!(
            answered(hit),
            (Source::Loader, "per-request", HitFreshness::Fresh)
        );
        assert!(Arc::ptr_eq(hit.value(), hits[0].value()));
    }
    assert_eq!(hits.iter().filter(|hit| hit.is_coalesced()).count(), 4);
    assert_eq!(stack.l1.inserts(), 0);
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(stack.codec.encodes(), 0, "not even encoded");
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!(cache.keys_in_progress(), 0);

    // A later caller does not get it: a new flight, a new loader call.
    let hit = fetch(
        &cache,
        "k",
        answer_now(&calls, |_| Fetched::no_store("second".to_owned())),
    )
    .await
    .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "second"));
    assert_eq!(calls.get(), 2);
    assert_eq!(cache.get("k").await.unwrap().map(|h| h.into_value()), None);
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
}

// ---------------------------------------------------------------------------------------
// 47. Negative caching
// ---------------------------------------------------------------------------------------

/// Behaviour 47, without `negative_ttl`: `Fetched::absent()` is `CacheError::NotFound` for
/// every `get_or_fetch` caller of the flight and `Ok(None)` for a joined `get`; nothing is
/// stored, so the next call runs the loader again.
#[tokio::test(start_paused = true)]
async fn b47_absent_without_negative_ttl_is_not_found_for_all_and_stores_nothing() {
    let (stack, cache, calls) = setup(Stack::cache);
    let gate = Gate::closed();

    assert_absent_for_three_callers_and_a_get(&cache, &calls, &gate).await;
    settle().await;
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().flights, 1);
    assert_eq!(stack.l1.inserts(), 0);
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_stored_in_no_tier(&stack, "gone");

    let error = fetch(&cache, "gone", answer_now(&calls, |_| Fetched::absent()))
        .await
        .unwrap_err();
    assert_not_found(&error);
    assert_eq!(calls.get(), 2, "nothing remembered: the loader runs again");
    let hit = fetch(&cache, "gone", value_now(&calls, "back"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "back"));
    assert_eq!(calls.get(), 3);
}

/// Behaviour 47, with `negative_ttl`: the answer is remembered as a tombstone in every tier
/// for `negative_ttl` (not the value TTL). Within it, `get_or_fetch` is `NotFound` and `get`
/// is `None` from the L1 tombstone with no loader call and no tier read; another node (its
/// own L1, the same L2) reads the tombstone from L2 without calling its loader and keeps it
/// in its L1 until the same instant. After `negative_ttl`, the loader runs again.
#[tokio::test(start_paused = true)]
async fn b47_absent_with_negative_ttl_is_remembered_as_a_tombstone_in_every_tier() {
    let stack = Stack::<String>::new();
    let negative = FetchOptions::new()
        .ttl(10 * MINUTE)
        .negative_ttl(30 * SECOND);
    let cache = stack.tiered_builder().defaults(negative).build();
    let calls = Calls::default();
    let gate = Gate::closed();
    let t0 = stack.clock.now();
    let gone_at = t0.saturating_add(30 * SECOND);

    assert_absent_for_three_callers_and_a_get(&cache, &calls, &gate).await;
    settle().await;
    assert_eq!(calls.get(), 1);

    // A tombstone in every tier, for negative_ttl.
    let l1 = stack.l1.peek(&key("gone")).expect("an L1 tombstone");
    assert!(l1.is_absent());
    assert_eq!(l1.meta().expires_at(), gone_at);
    assert_eq!(remote_meta(&stack, 0, "gone").expires_at(), gone_at);
    assert_eq!(remote_meta(&stack, 1, "gone").expires_at(), gone_at);

    // Within negative_ttl: not found from L1, no loader, no tier read.
    stack.clock.advance(29 * SECOND);
    let (l2, l3) = (stack.l2.calls(), stack.l3.calls());
    let error = fetch(&cache, "gone", value_now(&calls, "x"))
        .await
        .unwrap_err();
    assert_not_found(&error);
    assert!(cache.get("gone").await.unwrap().is_none());
    assert_eq!(calls.get(), 1);
    assert_eq!((stack.l2.calls(), stack.l3.calls()), (l2, l3));

    // Another node reads the tombstone from L2: no loader call, no L3 read.
    let node = stack.other_node::<String>();
    let other = node.tiered_builder().defaults(negative).build();
    let other_calls = Calls::default();
    let error = fetch(&other, "gone", value_now(&other_calls, "x"))
        .await
        .unwrap_err();
    assert_not_found(&error);
    assert_eq!(other_calls.get(), 0);
    assert_eq!(stack.l2.calls().get, l2.get + 1);
    assert_eq!(stack.l3.calls().get, l3.get);
    let copied = node.l1.peek(&key("gone")).expect("a tombstone in its L1");
    assert!(copied.is_absent());
    assert_eq!(copied.meta().expires_at(), gone_at, "never extended");
    let error = fetch(&other, "gone", value_now(&other_calls, "x"))
        .await
        .unwrap_err();
    assert_not_found(&error);
    assert_eq!(
        stack.l2.calls().get,
        l2.get + 1,
        "from its L1 tombstone now"
    );

    // After negative_ttl: the loader runs again (on both nodes).
    stack.clock.advance(SECOND);
    let hit = fetch(&cache, "gone", value_now(&calls, "back"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "back"));
    assert_eq!(calls.get(), 2);
    settle().await;
    let hit = fetch(&other, "gone", value_now(&other_calls, "x"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "back"));
    assert_eq!(other_calls.get(), 0);
}

// ---------------------------------------------------------------------------------------
// 48. Conditional refresh
// ---------------------------------------------------------------------------------------

/// Behaviour 48, from a stale L1 value: the loader's `FetchContext::stale()` shows the value
/// and its timestamps; answering `Fetched::not_modified()` gives the callers that value as
/// fresh, and renews `created_at`/`stale_at`/`expires_at` in every tier (L1 and both remote
/// tiers hold the same value with the same new timestamps).
#[tokio::test(start_paused = true)]
async fn b48_not_modified_renews_a_stale_l1_value_in_every_tier() {
    let (stack, cache, calls) = setup(fail_safe_cache);
    let first = fetch(&cache, "k", value_now(&calls, "v1")).await.unwrap();
    settle().await;
    let (l2_sets, l3_sets) = (stack.l2.calls().set, stack.l3.calls().set);

    let (t1, seen, hit) = not_modified_after(&stack, &cache, &calls, 2 * MINUTE).await;
    assert_eq!(
        seen.calls(),
        vec![Some(("v1".to_owned(), first.meta()))],
        "the loader saw the stale value and its timestamps"
    );
    assert_eq!((hit.as_str(), hit.freshness()), ("v1", HitFreshness::Fresh));
    let renewed = renewed_at(t1, 10 * MINUTE);
    assert_renewed_in_every_tier(&stack, &hit, "v1", renewed);
    // A memory tier has no metadata-only update: the entry is rewritten once per tier.
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (l2_sets + 1, l3_sets + 1)
    );

    // Fresh again for a TTL: L1 answers, and another node reads the same value from L2.
    stack.clock.advance(MINUTE - SECOND);
    let hit = fetch(&cache, "k", value_now(&calls, "unused"))
        .await
        .unwrap();
    assert_eq!(answered(&hit), (Source::L1, "v1", HitFreshness::Fresh));
    let node = stack.other_node::<String>();
    let hit = node.cache().get("k").await.unwrap().expect("in L2");
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "v1"));
    assert_eq!(hit.meta(), renewed);
    assert_eq!(calls.get(), 2);
}

/// Behaviour 48, from a stale tier entry: the loader is shown the newest candidate by
/// `created_at` (here L2's, newer than the stale L1 value), and `not_modified` renews that
/// value: L1 adopts it, and L2 and L3 hold it with the same new timestamps.
#[tokio::test(start_paused = true)]
async fn b48_not_modified_renews_the_newest_stale_candidate_from_a_remote_tier() {
    let (stack, cache, calls) = setup(fail_safe_cache);
    // L1 holds "old" (t0); L2 only holds "newer" (t0 + 30 s), written by another node.
    cache
        .set_with("k", "old".to_owned(), &support::write_l1_only())
        .await
        .unwrap();
    stack.clock.advance(30 * SECOND);
    let written = stack.clock.now();
    cache
        .set_with(
            "k",
            "newer".to_owned(),
            &FetchOptions::new().skip_l1_write(true).skip_l3_write(true),
        )
        .await
        .unwrap();
    let l2_entry = remote_meta(&stack, 0, "k");
    assert_eq!(l2_entry.created_at(), written);
    assert!(stack.l3.peek(&key("k")).is_none());

    // Both stale, neither expired.
    let (t1, seen, hit) = not_modified_after(&stack, &cache, &calls, 2 * MINUTE).await;
    assert_eq!(seen.calls(), vec![Some(("newer".to_owned(), l2_entry))]);
    assert_eq!(
        (hit.as_str(), hit.freshness()),
        ("newer", HitFreshness::Fresh)
    );
    let renewed = renewed_at(t1, 10 * MINUTE);
    assert_renewed_in_every_tier(&stack, &hit, "newer", renewed);
    let node = stack.other_node::<String>();
    let from_l3 = node
        .cache()
        .get_with("k", &FetchOptions::new().skip_l2_read(true))
        .await
        .unwrap()
        .expect("in L3");
    assert_eq!((from_l3.source(), from_l3.as_str()), (Source::L3, "newer"));
    assert_eq!(from_l3.meta(), renewed);
    assert_eq!(calls.get(), 1);
}

/// Behaviour 48 in a background refresh (stale-while-revalidate, no fail-safe): the refresh
/// loader is shown the value being revalidated, and `not_modified` renews it in every tier,
/// so the next read is a fresh L1 hit of the same value.
#[tokio::test(start_paused = true)]
async fn b48_not_modified_from_a_background_refresh_renews_the_value() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .defaults(
            FetchOptions::new()
                .ttl(MINUTE)
                .stale_while_revalidate(30 * SECOND),
        )
        .build();
    let calls = Calls::default();
    let first = fetch(&cache, "k", value_now(&calls, "v1")).await.unwrap();
    settle().await;

    stack.clock.advance(70 * SECOND);
    let t1 = stack.clock.now();
    let seen = StaleSeen::default();
    let hit = fetch(&cache, "k", seen.not_modified(&calls)).await.unwrap();
    assert_eq!(
        answered(&hit),
        (Source::L1, "v1", HitFreshness::Revalidating)
    );
    assert!(hit.refresh_started());
    settle().await;
    assert_eq!(seen.calls(), vec![Some(("v1".to_owned(), first.meta()))]);
    let renewed = renewed_at(t1, MINUTE + 30 * SECOND);
    assert_meta_in_every_tier(&stack, "k", renewed);
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (1, 0));

    let hit = fetch(&cache, "k", value_now(&calls, "unused"))
        .await
        .unwrap();
    assert_eq!(answered(&hit), (Source::L1, "v1", HitFreshness::Fresh));
    assert_eq!(hit.meta(), renewed);
    assert_eq!(calls.get(), 2);
}

/// Behaviour 48: without any stale value (`FetchContext::stale()` is `None`), answering
/// `not_modified` is a loader error, shared by the flight's callers, counted, stored nowhere,
/// also with fail-safe on (there is nothing to fall back on).
#[tokio::test(start_paused = true)]
async fn b48_not_modified_without_a_stale_value_is_a_loader_error() {
    let (stack, cache, calls) = setup(fail_safe_cache);
    let seen = StaleSeen::default();

    let error = fetch(&cache, "cold", seen.not_modified(&calls))
        .await
        .unwrap_err();
    assert_eq!(seen.calls(), vec![None], "nothing stale to show");
    assert_loader_error(&error);
    assert_eq!(cache.stats().loader_errors, 1);
    settle().await;
    assert_stored_in_no_tier(&stack, "cold");

    // Past its expires_at, a value is no candidate either.
    fetch(&cache, "old", value_now(&calls, "v1")).await.unwrap();
    settle().await;
    stack.clock.advance(10 * MINUTE);
    let error = fetch(&cache, "old", seen.not_modified(&calls))
        .await
        .unwrap_err();
    assert_loader_error(&error);
    assert_eq!(seen.calls(), vec![None, None]);
    assert_eq!(cache.stats().loader_errors, 2);
    assert_eq!(calls.get(), 3);
}

// ---------------------------------------------------------------------------------------
// 49. Failing without an error type
// ---------------------------------------------------------------------------------------

/// The outcome of one fail-safe scenario, to compare loaders failing in different ways.
#[derive(Debug, PartialEq)]
struct FailSafeRun {
    value: String,
    source: Source,
    freshness: HitFreshness,
    suppressed: String,
    throttled: HitFreshness,
    loader_calls: usize,
    activations: [u64; 3],
    loader_errors: u64,
    stored_l1: Option<String>,
}

/// Loads "v1", lets it go stale, fails with the loader `fail` and reads again in the throttle
/// window.
async fn fail_safe_run(
    fail: impl FnOnce(FetchContext<String>) -> Loaded + Send + 'static,
) -> FailSafeRun {
    let (stack, cache, calls) = setup(fail_safe_cache);
    fetch(&cache, "k", value_now(&calls, "v1")).await.unwrap();
    settle().await;
    stack.clock.advance(2 * MINUTE);
    let hit = fetch(&cache, "k", fail).await.unwrap();
    let throttled = fetch(&cache, "k", value_now(&calls, "unused"))
        .await
        .unwrap();
    settle().await;
    let stats = cache.stats();
    FailSafeRun {
        value: hit.as_str().to_owned(),
        source: hit.source(),
        freshness: hit.freshness(),
        suppressed: hit
            .suppressed_error()
            .and_then(CacheError::loader_error)
            .expect("the hidden loader error")
            .get()
            .to_string(),
        throttled: throttled.freshness(),
        loader_calls: calls.get(),
        activations: stats.fail_safe_activations,
        loader_errors: stats.loader_errors,
        stored_l1: stack.l1_value("k"),
    }
}

/// Behaviour 49: `ctx.fail(reason)` and `Fetched::fail(reason)` trigger fail-safe exactly like
/// returning `Err`: with fail-safe on and a stale candidate, the caller gets it flagged
/// `Stale(FailSafe { cause: LoaderError })` with the reason in the suppressed error, the
/// activation is counted and throttled, and the three runs are indistinguishable.
#[tokio::test(start_paused = true)]
async fn b49_fail_triggers_fail_safe_exactly_like_an_error() {
    let reason = "origin answered 503";
    let unused = Calls::default();
    let with_err = fail_safe_run(failing(&unused, reason)).await;
    let with_ctx = fail_safe_run(answer_now(&unused, move |ctx| ctx.fail(reason))).await;
    let with_fetched = fail_safe_run(answer_now(&unused, move |_| Fetched::fail(reason))).await;

    assert_eq!(with_ctx.value, "v1");
    assert_eq!(with_ctx.source, Source::L1, "the stale L1 value");
    assert_eq!(
        with_ctx.freshness,
        HitFreshness::Stale(StaleCause::FailSafe {
            cause: FailSafeCause::LoaderError,
            throttled: false
        })
    );
    assert_eq!(with_ctx.suppressed, reason);
    assert_eq!(
        with_ctx.throttled,
        HitFreshness::Stale(StaleCause::FailSafe {
            cause: FailSafeCause::LoaderError,
            throttled: true
        })
    );
    assert_eq!(with_ctx.loader_calls, 1, "the throttle spared the loader");
    assert_eq!(with_ctx.activations, [1, 0, 0]);
    assert_eq!(with_ctx.loader_errors, 1);
    assert_eq!(with_ctx.stored_l1.as_deref(), Some("v1"));
    assert_eq!(with_ctx, with_err, "ctx.fail is exactly like Err");
    assert_eq!(with_fetched, with_err, "Fetched::fail is exactly like Err");
    assert_eq!(unused.get(), 3);
}

/// Behaviour 49, without fail-safe (or without a candidate): `ctx.fail(reason)` is
/// `CacheError::Loader` whose loader's error is the reason, shared by every caller of the
/// flight (one allocation), counted, stored nowhere; the next call runs the loader again.
#[tokio::test(start_paused = true)]
async fn b49_fail_without_fail_safe_is_a_shared_loader_error_with_the_reason() {
    let (stack, cache, calls) = setup(Stack::cache);
    let gate = Gate::closed();
    let reason = "tenant 42 is suspended";

    let callers = spawn_gated(&cache, "k", 3, &calls, &gate, move |ctx| ctx.fail(reason));
    settle().await;
    gate.open();
    let mut errors: Vec<LoaderError> = Vec::new();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert_eq!(
            error.loader_error().map(|e| e.get().to_string()).as_deref(),
            Some(reason)
        );
        errors.push(error.loader_error().expect("a loader error").clone());
    }
    assert!(errors.iter().all(|e| LoaderError::ptr_eq(e, &errors[0])));
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().loader_errors, 1);
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    let error = fetch(
        &cache,
        "k",
        answer_now(&calls, move |_| Fetched::fail(reason)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, CacheError::Loader(e) if e.get().to_string() == reason),
        "{error:?}"
    );
    assert_eq!(calls.get(), 2, "errors are not cached");

    // Fail-safe on, but no candidate: the same error.
    let error = cache
        .get_or_fetch_with(
            "cold",
            &fail_safe(),
            answer_now(&calls, move |ctx| ctx.fail(reason)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CacheError::Loader(e) if e.get().to_string() == reason),
        "{error:?}"
    );
    assert_eq!(cache.stats().fail_safe_activations, [0, 0, 0]);
}

// ---------------------------------------------------------------------------------------
// 50. Per-tier skip from the loader
// ---------------------------------------------------------------------------------------

/// Behaviour 50: `Fetched::value(v).skip_l2_write()` / `.skip_l3_write()` keep this value out
/// of that remote tier (it is stored in L1 and the other tier); both together store it in L1
/// only. The skip is for that write only.
#[tokio::test(start_paused = true)]
async fn b50_skip_writes_from_the_loader_keep_the_value_out_of_those_tiers() {
    let (stack, cache, calls) = setup(Stack::cache);
    let sets = || (stack.l2.calls().set, stack.l3.calls().set);

    let hit = fetch(
        &cache,
        "no-l2",
        answer_now(&calls, |_| Fetched::value("a".to_owned()).skip_l2_write()),
    )
    .await
    .unwrap();
    settle().await;
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "a"));
    assert_eq!(sets(), (0, 1));
    assert_eq!(stack.l1_value("no-l2").as_deref(), Some("a"));
    assert!(stack.l2.peek(&key("no-l2")).is_none());
    assert!(stack.l3.peek(&key("no-l2")).is_some());

    fetch(
        &cache,
        "no-l3",
        answer_now(&calls, |_| Fetched::value("b".to_owned()).skip_l3_write()),
    )
    .await
    .unwrap();
    settle().await;
    assert_eq!(sets(), (1, 1));
    assert_eq!(stack.l1_value("no-l3").as_deref(), Some("b"));
    assert!(stack.l2.peek(&key("no-l3")).is_some());
    assert!(stack.l3.peek(&key("no-l3")).is_none());

    cache
        .get_or_fetch_with(
            "l1-only",
            &FetchOptions::new(),
            answer_now(&calls, |_| {
                Fetched::value("c".to_owned())
                    .skip_l2_write()
                    .skip_l3_write()
            }),
        )
        .await
        .unwrap();
    settle().await;
    assert_eq!(sets(), (1, 1));
    assert_eq!(stack.codec.encodes(), 2, "nothing to encode for L1 only");
    assert_eq!(stack.l1_value("l1-only").as_deref(), Some("c"));
    assert!(stack.l2.peek(&key("l1-only")).is_none());
    assert!(stack.l3.peek(&key("l1-only")).is_none());

    // L1 serves all three.
    for (name, value) in [("no-l2", "a"), ("no-l3", "b"), ("l1-only", "c")] {
        let hit = fetch(&cache, name, value_now(&calls, "unused"))
            .await
            .unwrap();
        assert_eq!((hit.source(), hit.as_str()), (Source::L1, value));
    }
    assert_eq!(calls.get(), 3);

    // The skip was for that write only: the next load of the key writes both tiers.
    stack.clock.advance(5 * MINUTE);
    fetch(&cache, "l1-only", value_now(&calls, "c2"))
        .await
        .unwrap();
    settle().await;
    assert_eq!(sets(), (2, 2));
    assert_eq!(calls.get(), 4);
}

// ---------------------------------------------------------------------------------------
// 61. Normalisation of the new options; 60. their composition
// ---------------------------------------------------------------------------------------

/// Behaviour 61: a soft timeout above the hard timeout is lowered to it (the caller waits
/// until the hard timeout and gets the stale value flagged `HardTimeout`, never a soft
/// timeout), warned once per distinct configuration, and once at build for handle defaults.
#[tokio::test(start_paused = true)]
async fn b61_soft_timeout_above_hard_is_lowered_to_hard_and_warned_once() {
    let logs = capture(tracing::Level::WARN);
    let (stack, cache, calls) = setup(Stack::cache);
    let incoherent = fail_safe()
        .hard_timeout(2 * SECOND)
        .soft_timeout(5 * SECOND);

    cache
        .get_or_fetch_with("k", &incoherent, value_now(&calls, "v1"))
        .await
        .unwrap();
    settle().await;
    logs.assert_lines(1, &[WARNING, "soft_timeout", "configured=5s", "used=2s"]);
    stack.clock.advance(2 * MINUTE);
    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &incoherent, never(&calls))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 2 * SECOND);
    assert_eq!(
        (hit.as_str(), hit.freshness()),
        ("v1", HitFreshness::Stale(StaleCause::HardTimeout))
    );
    assert_eq!(cache.stats().soft_timeouts, 0);
    logs.assert_lines(1, &[WARNING]);

    // Another incoherent configuration: one more warning, once.
    let other = fail_safe()
        .hard_timeout(2 * SECOND)
        .soft_timeout(3 * SECOND);
    for name in ["a", "b"] {
        cache
            .get_or_fetch_with(name, &other, value_now(&calls, "v"))
            .await
            .unwrap();
    }
    logs.assert_lines(2, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "soft_timeout", "configured=3s", "used=2s"]);

    // As handle defaults: warned when built, not again on calls.
    let with_defaults = stack
        .tiered_builder()
        .defaults(fail_safe().hard_timeout(SECOND).soft_timeout(4 * SECOND))
        .build();
    logs.assert_lines(1, &[WARNING, "configured=4s", "used=1s"]);
    for options in [FetchOptions::new(), FetchOptions::new().ttl(2 * MINUTE)] {
        with_defaults
            .get_or_fetch_with("c", &options, value_now(&calls, "v"))
            .await
            .unwrap();
    }
    logs.assert_lines(3, &[WARNING]);

    // A coherent soft timeout is never warned about, and applies.
    let coherent = fail_safe().hard_timeout(2 * SECOND).soft_timeout(SECOND);
    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &coherent, never(&calls))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), SECOND);
    assert_eq!(
        hit.freshness(),
        HitFreshness::Stale(StaleCause::SoftTimeout)
    );
    logs.assert_lines(3, &[WARNING]);
}

/// Behaviour 61 (and 30): a fail-safe max below the TTL is raised to the TTL, so the value
/// expires with its freshness (no reserve), warned once per distinct configuration.
#[tokio::test(start_paused = true)]
async fn b61_fail_safe_max_below_ttl_is_raised_to_ttl_and_warned_once() {
    let logs = capture(tracing::Level::WARN);
    let (stack, cache, calls) = setup(Stack::cache);
    let incoherent = FetchOptions::new()
        .ttl(10 * MINUTE)
        .fail_safe(true)
        .fail_safe_max(MINUTE);
    let t0 = stack.clock.now();

    for name in ["a", "b", "c"] {
        let hit = cache
            .get_or_fetch_with(name, &incoherent, value_now(&calls, "v"))
            .await
            .unwrap();
        assert_eq!(hit.meta().stale_at(), t0.saturating_add(10 * MINUTE));
        assert_eq!(
            hit.meta().expires_at(),
            t0.saturating_add(10 * MINUTE),
            "max(fail_safe_max, ttl) = ttl"
        );
    }
    settle().await;
    assert_eq!(remote_meta(&stack, 0, "a"), l1_meta(&stack, "a"));
    logs.assert_lines(
        1,
        &[WARNING, "fail_safe_max", "configured=60s", "used=600s"],
    );

    // No reserve: once stale, nothing is left for fail-safe.
    stack.clock.advance(10 * MINUTE);
    let error = cache
        .get_or_fetch_with("a", &incoherent, failing(&calls, "down"))
        .await
        .unwrap_err();
    assert_loader_error(&error);

    // Another configuration warns once more; a coherent one never.
    let other = incoherent.fail_safe_max(2 * MINUTE);
    for name in ["d", "e"] {
        cache
            .get_or_fetch_with(name, &other, value_now(&calls, "v"))
            .await
            .unwrap();
    }
    logs.assert_lines(2, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "configured=120s", "used=600s"]);
    cache
        .get_or_fetch_with(
            "f",
            &incoherent.fail_safe_max(10 * MINUTE),
            value_now(&calls, "v"),
        )
        .await
        .unwrap();
    logs.assert_lines(2, &[WARNING]);
}

/// Behaviour 61 (and 38): an eager-refresh threshold outside (0, 1) (0, 1, 1.5) turns eager
/// refresh off: a read late in the value's freshness starts no refresh. Each distinct
/// threshold is warned once; a threshold inside (0, 1) is not warned about and works.
#[tokio::test(start_paused = true)]
async fn b61_eager_refresh_threshold_outside_the_unit_interval_turns_it_off() {
    let logs = capture(tracing::Level::WARN);
    let (stack, cache, calls) = setup(Stack::cache);

    for (name, threshold, shown) in [("zero", 0.0, "0"), ("one", 1.0, "1"), ("big", 1.5, "1.5")] {
        let options = FetchOptions::new().ttl(MINUTE).eager_refresh(threshold);
        cache
            .get_or_fetch_with(name, &options, value_now(&calls, "v"))
            .await
            .unwrap();
        stack.clock.advance(50 * SECOND);
        for _ in 0..3 {
            let hit = cache
                .get_or_fetch_with(name, &options, value_now(&calls, "refreshed"))
                .await
                .unwrap();
            assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v"), "{name}");
            assert!(!hit.refresh_started(), "{name}: eager refresh is off");
        }
        settle().await;
        logs.assert_lines(
            1,
            &[
                WARNING,
                "eager_refresh",
                &format!("configured={shown} "),
                "used=off",
            ],
        );
    }
    assert_eq!(cache.stats().refreshes_started, 0);
    assert_eq!(calls.get(), 3);
    logs.assert_lines(3, &[WARNING]);

    // A threshold inside (0, 1): no warning, and a read past it starts one refresh.
    let options = FetchOptions::new().ttl(MINUTE).eager_refresh(0.5);
    cache
        .get_or_fetch_with("half", &options, value_now(&calls, "v"))
        .await
        .unwrap();
    stack.clock.advance(50 * SECOND);
    let hit = cache
        .get_or_fetch_with("half", &options, value_now(&calls, "refreshed"))
        .await
        .unwrap();
    assert_eq!((hit.as_str(), hit.freshness()), ("v", HitFreshness::Fresh));
    assert!(hit.refresh_started());
    settle().await;
    assert_eq!(cache.stats().refreshes_started, 1);
    assert_eq!(stack.l1_value("half").as_deref(), Some("refreshed"));
    logs.assert_lines(3, &[WARNING]);
}

/// Behaviour 61 (and 43): with fail-safe, a stale-while-revalidate window longer than the
/// reserve after freshness (`fail_safe_max - ttl`) is clamped to it, warned once per
/// distinct configuration; the value still expires at `created_at + fail_safe_max`. Without
/// fail-safe the window is the reserve itself, so no window is too long.
#[tokio::test(start_paused = true)]
async fn b61_swr_beyond_the_fail_safe_horizon_is_clamped_and_warned_once() {
    let logs = capture(tracing::Level::WARN);
    let (stack, cache, calls) = setup(Stack::cache);
    let incoherent = FetchOptions::new()
        .ttl(MINUTE)
        .fail_safe(true)
        .fail_safe_max(5 * MINUTE)
        .stale_while_revalidate(10 * MINUTE);
    let t0 = stack.clock.now();

    let hit = cache
        .get_or_fetch_with("k", &incoherent, value_now(&calls, "v1"))
        .await
        .unwrap();
    settle().await;
    assert_eq!(hit.meta().expires_at(), t0.saturating_add(5 * MINUTE));
    assert_eq!(
        remote_meta(&stack, 0, "k").expires_at(),
        t0.saturating_add(5 * MINUTE)
    );
    logs.assert_lines(
        1,
        &[
            WARNING,
            "stale_while_revalidate",
            "configured=600s",
            "used=240s",
        ],
    );

    // Inside the clamped window: revalidating (the refresh fails, the value stays).
    stack.clock.advance(4 * MINUTE);
    let hit = cache
        .get_or_fetch_with("k", &incoherent, failing(&calls, "down"))
        .await
        .unwrap();
    assert_eq!(
        (hit.as_str(), hit.freshness()),
        ("v1", HitFreshness::Revalidating)
    );
    settle().await;
    // Past it (the value's expires_at): gone, the loader answers.
    stack.clock.advance(MINUTE);
    let hit = cache
        .get_or_fetch_with("k", &incoherent, value_now(&calls, "v2"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v2"));
    logs.assert_lines(1, &[WARNING]);

    // A window exactly the reserve is coherent.
    cache
        .get_or_fetch_with(
            "a",
            &incoherent.stale_while_revalidate(4 * MINUTE),
            value_now(&calls, "v"),
        )
        .await
        .unwrap();
    logs.assert_lines(1, &[WARNING]);
    // Without fail-safe, any window is the reserve: no warning, the value lives through it.
    let hit = cache
        .get_or_fetch_with(
            "b",
            &FetchOptions::new()
                .ttl(MINUTE)
                .stale_while_revalidate(10 * MINUTE),
            value_now(&calls, "v"),
        )
        .await
        .unwrap();
    assert_eq!(
        hit.meta()
            .expires_at()
            .saturating_duration_since(hit.meta().stale_at()),
        10 * MINUTE
    );
    logs.assert_lines(1, &[WARNING]);
    // Another incoherent window: warned once more.
    for name in ["c", "d"] {
        cache
            .get_or_fetch_with(
                name,
                &incoherent.stale_while_revalidate(5 * MINUTE),
                value_now(&calls, "v"),
            )
            .await
            .unwrap();
    }
    logs.assert_lines(2, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "configured=300s", "used=240s"]);
}

/// Behaviour 60 for the options added with fail-safe, refresh and negative caching:
/// `FetchOptions::or` composes each of them field by field, eager refresh included.
#[test]
fn b60_or_composes_the_resilience_fields_field_by_field() {
    let defaults = FetchOptions::new()
        .fail_safe(true)
        .fail_safe_max(60 * MINUTE)
        .fail_safe_throttle(30 * SECOND)
        .soft_timeout(SECOND)
        .stale_while_revalidate(2 * MINUTE)
        .eager_refresh(0.8)
        .refresh_backoff(10 * SECOND)
        .negative_ttl(20 * SECOND)
        .jitter_max(3 * SECOND)
        .jitter_remote(true)
        .allow_stale(true);
    assert_eq!(FetchOptions::new().or(&defaults), defaults);
    assert_eq!(defaults.or(&FetchOptions::new()), defaults);

    let call = FetchOptions::new()
        .fail_safe(false)
        .fail_safe_throttle(5 * SECOND)
        .eager_refresh(0.25)
        .negative_ttl(Duration::ZERO)
        .jitter_remote(false);
    let effective = call.or(&defaults);
    assert_eq!(
        effective.get_fail_safe(),
        Some(false),
        "false overrides true"
    );
    assert_eq!(effective.get_fail_safe_max(), Some(60 * MINUTE));
    assert_eq!(effective.get_fail_safe_throttle(), Some(5 * SECOND));
    assert_eq!(effective.get_soft_timeout(), Some(SECOND));
    assert_eq!(effective.get_stale_while_revalidate(), Some(2 * MINUTE));
    assert_eq!(effective.get_eager_refresh(), Some(0.25));
    assert_eq!(effective.get_refresh_backoff(), Some(10 * SECOND));
    assert_eq!(effective.get_negative_ttl(), Some(Duration::ZERO));
    assert_eq!(effective.get_jitter_max(), Some(3 * SECOND));
    assert_eq!(effective.get_jitter_remote(), Some(false));
    assert_eq!(effective.get_allow_stale(), Some(true));
    assert_eq!(
        FetchOptions::new()
            .ttl(MINUTE)
            .or(&defaults)
            .get_eager_refresh(),
        Some(0.8),
        "inherited"
    );
}

/// Behaviour 60, observed: eager refresh and negative caching set in the handle's defaults
/// (over two `CacheBuilder::defaults` calls) still apply to a call that sets other options.
#[tokio::test(start_paused = true)]
async fn b60_resilience_defaults_apply_to_calls_with_other_options() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .defaults(FetchOptions::new().eager_refresh(0.5))
        .defaults(FetchOptions::new().negative_ttl(30 * SECOND))
        .build();
    let calls = Calls::default();
    let call = FetchOptions::new().ttl(MINUTE).hard_timeout(10 * SECOND);

    cache
        .get_or_fetch_with("k", &call, value_now(&calls, "v1"))
        .await
        .unwrap();
    stack.clock.advance(31 * SECOND);
    let hit = cache
        .get_or_fetch_with("k", &call, value_now(&calls, "v2"))
        .await
        .unwrap();
    assert_eq!(hit.as_str(), "v1");
    assert!(hit.refresh_started(), "eager refresh from the defaults");
    settle().await;
    assert_eq!(stack.l1_value("k").as_deref(), Some("v2"));

    let error = cache
        .get_or_fetch_with("gone", &call, answer_now(&calls, |_| Fetched::absent()))
        .await
        .unwrap_err();
    assert_not_found(&error);
    let error = cache
        .get_or_fetch_with("gone", &call, value_now(&calls, "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, CacheError::NotFound),
        "negative_ttl from the defaults"
    );
    assert_eq!(calls.get(), 3);
}
