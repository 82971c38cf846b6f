//! Read-through behaviours 60-62: option resolution (call over handle defaults over built-in
//! defaults), normalisation of incoherent options with a warning logged once per distinct
//! configuration, and the tier masks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::time::Duration;

use support::{
    Calls, MINUTE, Stack, instant, key, settle, skip_every_read, write_l1_only, write_l3_only,
    write_remote_only,
};
use tierkit_cache::codec::Postcard;
use tierkit_cache::frame::decode_frame;
use tierkit_cache::{
    Cache, CacheError, Compression, DEFAULT_HARD_TIMEOUT, DEFAULT_TTL, FetchContext, FetchOptions,
    Fetched, Hit, LocalTier, Source, TimeoutKind,
};
use tierkit_testkit::logs::capture;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// A loader that counts its call and never answers.
fn never(
    calls: &Calls,
) -> impl FnOnce(FetchContext<String>) -> std::future::Pending<Result<String, std::io::Error>>
+ Send
+ 'static {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        std::future::pending()
    }
}

/// How long a hit's value stays fresh.
fn ttl_of<V>(hit: &Hit<V>) -> Duration {
    hit.meta()
        .stale_at()
        .saturating_duration_since(hit.meta().created_at())
}

/// Behaviour 60: `FetchOptions::or` composes field by field: a field the call sets wins, a
/// field it leaves unset comes from the defaults, and `Some(false)` overrides `Some(true)`.
#[test]
fn b60_or_composes_field_by_field() {
    let defaults = FetchOptions::new()
        .ttl(10 * MINUTE)
        .hard_timeout(Duration::from_secs(2))
        .no_loader(true);
    let call = FetchOptions::new()
        .ttl(MINUTE)
        .no_loader(false)
        .skip_l2_write(true);
    let effective = call.or(&defaults);
    assert_eq!(effective.get_ttl(), Some(MINUTE), "the call's field wins");
    assert_eq!(
        effective.get_hard_timeout(),
        Some(Duration::from_secs(2)),
        "inherited"
    );
    assert_eq!(
        effective.get_no_loader(),
        Some(false),
        "an explicit false overrides a true"
    );
    assert_eq!(effective.get_skip_l2_write(), Some(true));
    assert_eq!(
        effective.get_background_cap(),
        None,
        "unset everywhere: the built-in applies"
    );
    assert_eq!(FetchOptions::new().or(&defaults), defaults);
    assert_eq!(defaults.or(&FetchOptions::new()), defaults);
}

/// Behaviour 60, observed through the TTL of stored values: a call's TTL beats the handle's
/// default TTL, which beats the built-in TTL; `set` and `set_with` resolve the same way.
#[tokio::test(start_paused = true)]
async fn b60_ttl_resolves_call_over_defaults_over_built_in() {
    let stack = Stack::<String>::new();
    let calls = Calls::default();
    let with_defaults = stack
        .tiered_builder()
        .defaults(FetchOptions::new().ttl(10 * MINUTE))
        .build();

    let hit = with_defaults
        .get_or_fetch_with("a", &FetchOptions::new(), instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!(ttl_of(&hit), 10 * MINUTE, "the handle's default");
    // A call setting another field still inherits the default TTL.
    let hit = with_defaults
        .get_or_fetch_with(
            "b",
            &FetchOptions::new().hard_timeout(Duration::from_secs(3)),
            instant(&calls, "v"),
        )
        .await
        .unwrap();
    assert_eq!(
        ttl_of(&hit),
        10 * MINUTE,
        "unset fields inherit the handle's default"
    );
    let hit = with_defaults
        .get_or_fetch_with("c", &FetchOptions::new().ttl(MINUTE), instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!(ttl_of(&hit), MINUTE, "the call's own TTL");

    let built_in = stack.builder().build();
    let hit = built_in
        .get_or_fetch_with("d", &FetchOptions::new(), instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!(
        ttl_of(&hit),
        DEFAULT_TTL,
        "no default anywhere: the built-in TTL"
    );

    // `set` resolves its TTL the same way; the remote copies carry the same timestamps.
    with_defaults.set("e", "v".to_owned()).await.unwrap();
    let entry = stack.l1.peek(&key("e")).unwrap();
    assert_eq!(
        entry
            .meta()
            .stale_at()
            .saturating_duration_since(entry.meta().created_at()),
        10 * MINUTE
    );
    with_defaults
        .set_with("f", "v".to_owned(), &FetchOptions::new().ttl(MINUTE))
        .await
        .unwrap();
    let stored = stack.l2.peek(&key("f")).unwrap();
    assert_eq!(
        stored
            .stale_at()
            .saturating_duration_since(stored.created_at()),
        MINUTE
    );
    assert_eq!(calls.get(), 4);
}

/// Behaviour 60, observed through `no_loader` and the hard timeout: fields a call leaves
/// unset come from the handle's defaults, fields it sets override them (even to `false`),
/// and without any default the built-in value applies.
#[tokio::test(start_paused = true)]
async fn b60_unset_call_fields_inherit_handle_defaults() {
    let stack = Stack::<String>::new();
    let calls = Calls::default();
    let cache = stack
        .builder()
        .defaults(
            FetchOptions::new()
                .hard_timeout(Duration::from_secs(2))
                .no_loader(true),
        )
        .build();

    // `no_loader` from the defaults, although the call sets another field.
    let error = cache
        .get_or_fetch_with("k", &FetchOptions::new().ttl(MINUTE), instant(&calls, "v"))
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::NotFound), "{error:?}");
    assert_eq!(calls.get(), 0);

    // The call turns the loader back on; the hard timeout still comes from the defaults.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with("k", &FetchOptions::new().no_loader(false), never(&calls))
        .await
        .unwrap_err();
    assert!(
        matches!(error, CacheError::Timeout { kind: TimeoutKind::Hard, after } if after == Duration::from_secs(2)),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.get(), 1);

    // The call's own hard timeout wins over the default one.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with(
            "k2",
            &FetchOptions::new().no_loader(false).hard_timeout(500 * MS),
            never(&calls),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::Timeout { after, .. } if after == 500 * MS));
    assert_eq!(start.elapsed(), 500 * MS);

    // No default at all: the built-in hard timeout.
    let plain = stack.builder().build();
    let start = Instant::now();
    let error = plain
        .get_or_fetch_with("k3", &FetchOptions::new().ttl(MINUTE), never(&calls))
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::Timeout { after, .. } if after == DEFAULT_HARD_TIMEOUT));
    assert_eq!(start.elapsed(), DEFAULT_HARD_TIMEOUT);
}

/// Behaviour 61: a background cap below the hard timeout is raised to the hard timeout, and
/// a warning is logged once per distinct configuration (per cache), whether the options come
/// from a call or from the handle's defaults.
///
/// The other normalisations of behaviour 61 (soft timeout above hard, fail-safe max below the
/// TTL, eager-refresh threshold outside (0, 1), SWR window too wide) concern options that do
/// not exist yet.
#[tokio::test(start_paused = true)]
async fn b61_background_cap_below_hard_timeout_is_raised_and_warned_once() {
    let logs = capture(tracing::Level::WARN);
    const WARNING: &str = "incoherent cache option normalised";
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let incoherent = FetchOptions::new()
        .hard_timeout(100 * MS)
        .background_cap(50 * MS);

    // A loader answering at 80 ms: past the configured cap, within the raised one.
    for name in ["a", "b", "c"] {
        let calls = calls.clone();
        let hit = cache
            .get_or_fetch_with(name, &incoherent, move |_| async move {
                calls.bump();
                tokio::time::sleep(80 * MS).await;
                Ok::<_, std::io::Error>("v".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(
            hit.source(),
            Source::Loader,
            "the cap was raised above 80 ms"
        );
    }
    logs.assert_lines(
        1,
        &[WARNING, "background_cap", "configured=50ms", "used=100ms"],
    );

    // The raised cap is exactly the hard timeout: a loader that never answers is cancelled
    // at 100 ms, together with its waiter's timeout.
    let start = Instant::now();
    let error = cache
        .get_or_fetch_with("d", &incoherent, never(&calls))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CacheError::Timeout {
                kind: TimeoutKind::Hard,
                ..
            }
        ),
        "{error:?}"
    );
    settle().await;
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(cache.stats().flights_capped, 1);
    assert_eq!(cache.flights_in_progress(), 0);
    logs.assert_lines(1, &[WARNING]);

    // Another incoherent configuration: one more warning, once.
    let other = FetchOptions::new()
        .hard_timeout(100 * MS)
        .background_cap(60 * MS);
    for name in ["e", "f"] {
        cache
            .get_or_fetch_with(name, &other, instant(&calls, "v"))
            .await
            .unwrap();
    }
    logs.assert_lines(2, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "configured=60ms"]);

    // Incoherent handle defaults: warned when the cache is built, not again on calls that
    // use them (with or without options of their own).
    let with_defaults = stack
        .builder()
        .defaults(
            FetchOptions::new()
                .hard_timeout(200 * MS)
                .background_cap(10 * MS),
        )
        .build();
    logs.assert_lines(3, &[WARNING]);
    logs.assert_lines(1, &[WARNING, "configured=10ms", "used=200ms"]);
    with_defaults
        .get_or_fetch_with("g", &FetchOptions::new(), instant(&calls, "v"))
        .await
        .unwrap();
    with_defaults
        .get_or_fetch_with("h", &FetchOptions::new().ttl(MINUTE), instant(&calls, "v"))
        .await
        .unwrap();
    logs.assert_lines(3, &[WARNING]);

    // A coherent configuration is never warned about.
    cache
        .get_or_fetch_with(
            "i",
            &FetchOptions::new()
                .hard_timeout(100 * MS)
                .background_cap(100 * MS),
            instant(&calls, "v"),
        )
        .await
        .unwrap();
    logs.assert_lines(3, &[WARNING]);
}

/// Behaviour 62: `skip_l1_read` skips the L1 lookup but still writes L1; adding
/// `skip_l1_write` keeps the value out of L1, and the older value L1 held is removed.
#[tokio::test(start_paused = true)]
async fn b62_skip_l1_read_still_writes_l1_unless_skip_l1_write() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    // L1 only holds a fresh "old".
    cache
        .set_with("k", "old".to_owned(), &write_l1_only())
        .await
        .unwrap();
    stack.clock.advance(Duration::from_secs(1));

    // skip_l1_read + skip_l1_write: the loader runs, L1 loses "old" and does not get "new".
    let inserts = stack.l1.inserts();
    let hit = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().skip_l1_read(true).skip_l1_write(true),
            instant(&calls, "new"),
        )
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "new"));
    assert_eq!(stack.l1.inserts(), inserts, "no L1 write");
    assert_eq!(stack.l1_value("k"), None, "no older value left in L1");
    settle().await;
    assert_eq!(
        stack.l2.calls().set,
        1,
        "the remote tiers are still written"
    );

    // skip_l1_read alone: the fresh L1 value is not read, but the result is written to L1.
    stack.clock.advance(Duration::from_secs(1));
    let hit = cache
        .get_or_fetch_with("k", &skip_every_read(), instant(&calls, "newer"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "newer"));
    assert_eq!(stack.l1.inserts(), inserts + 1);
    assert_eq!(stack.l1_value("k").as_deref(), Some("newer"));
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "newer"));
    assert_eq!(calls.get(), 2);
}

/// Behaviour 62: `skip_l2_read` and `skip_l3_read` skip exactly those reads (counted on the
/// tiers).
#[tokio::test(start_paused = true)]
async fn b62_skip_l2_read_and_skip_l3_read() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    // L2 and L3 hold the value; L1 does not.
    cache
        .set_with("k", "remote".to_owned(), &write_remote_only())
        .await
        .unwrap();
    let read_only = write_remote_only();

    // Each read: its options, where the answer comes from, and the L2 and L3 reads so far.
    for (options, answer, reads, what) in [
        (
            read_only.skip_l2_read(true),
            (Source::L3, "remote"),
            (0, 1),
            "skip_l2_read",
        ),
        (
            read_only.skip_l3_read(true),
            (Source::L2, "remote"),
            (1, 1),
            "skip_l3_read",
        ),
        (
            read_only.skip_l2_read(true).skip_l3_read(true),
            (Source::Loader, "loader"),
            (1, 1),
            "no remote read",
        ),
    ] {
        let hit = cache
            .get_or_fetch_with("k", &options, instant(&calls, "loader"))
            .await
            .unwrap();
        assert_eq!((hit.source(), hit.as_str()), answer, "{what}");
        assert_eq!(
            (stack.l2.calls().get, stack.l3.calls().get),
            reads,
            "{what}"
        );
    }
    assert_eq!(calls.get(), 1);
}

/// Behaviour 62: `skip_l2_write` and `skip_l3_write` skip exactly those writes: for a loaded
/// value, for an L3 hit's refill of L2, and for `set_with`.
#[tokio::test(start_paused = true)]
async fn b62_skip_l2_write_and_skip_l3_write() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();

    cache
        .get_or_fetch_with(
            "a",
            &FetchOptions::new().skip_l2_write(true),
            instant(&calls, "v"),
        )
        .await
        .unwrap();
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 1));
    assert!(stack.l2.peek(&key("a")).is_none() && stack.l3.peek(&key("a")).is_some());

    cache
        .get_or_fetch_with(
            "b",
            &FetchOptions::new().skip_l3_write(true),
            instant(&calls, "v"),
        )
        .await
        .unwrap();
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    assert!(stack.l2.peek(&key("b")).is_some() && stack.l3.peek(&key("b")).is_none());

    // An L3 hit refills L2, unless skip_l2_write.
    let reader = stack.other_node::<String>().cache();
    let hit = reader
        .get_or_fetch_with(
            "a",
            &FetchOptions::new().skip_l2_write(true),
            instant(&calls, "x"),
        )
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::L3);
    settle().await;
    assert_eq!(stack.l2.calls().set, 1, "no refill of L2");
    assert!(stack.l2.peek(&key("a")).is_none());

    // set_with honours the same flags.
    cache
        .set_with(
            "c",
            "v".to_owned(),
            &FetchOptions::new().skip_l3_write(true),
        )
        .await
        .unwrap();
    cache
        .set_with(
            "d",
            "v".to_owned(),
            &FetchOptions::new().skip_l2_write(true),
        )
        .await
        .unwrap();
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (2, 2));
    assert!(stack.l2.peek(&key("c")).is_some() && stack.l3.peek(&key("c")).is_none());
    assert!(stack.l2.peek(&key("d")).is_none() && stack.l3.peek(&key("d")).is_some());
    assert_eq!(calls.get(), 2);
}

/// Behaviour 62: `no_loader` on a full miss returns `NotFound` after reading every tier,
/// without calling the loader; a value in a tier is still returned.
#[tokio::test(start_paused = true)]
async fn b62_no_loader_on_a_full_miss_is_not_found() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let no_loader = FetchOptions::new().no_loader(true);

    let error = cache
        .get_or_fetch_with("k", &no_loader, instant(&calls, "v"))
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::NotFound), "{error:?}");
    assert_eq!(calls.get(), 0, "the loader is never called");
    assert_eq!((stack.l2.calls().get, stack.l3.calls().get), (1, 1));
    assert_eq!(cache.flights_in_progress(), 0);
    assert!(stack.l1.peek(&key("k")).is_none());

    cache
        .set_with("k", "in-l3".to_owned(), &write_l3_only())
        .await
        .unwrap();
    let hit = cache
        .get_or_fetch_with("k", &no_loader, instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "in-l3"));
    assert_eq!(calls.get(), 0);
}

/// The three write masks, by the tier they skip.
fn skipping(tier: Source) -> FetchOptions {
    match tier {
        Source::L1 => FetchOptions::new().skip_l1_write(true),
        Source::L2 => FetchOptions::new().skip_l2_write(true),
        _ => FetchOptions::new().skip_l3_write(true),
    }
}

/// The value `tier` of the stack holds for "k", decoded (`None`: none).
fn held_in(stack: &Stack<String>, tier: Source) -> Option<String> {
    let remote = match tier {
        Source::L1 => return stack.l1_value("k"),
        Source::L2 => stack.l2.peek(&key("k")),
        _ => stack.l3.peek(&key("k")),
    };
    remote.map(|stored| {
        decode_frame(&key("k"), &Postcard, &Compression::none(), stored.payload()).unwrap()
    })
}

/// After a write of "v2" over "v1" that skipped `skipped`: the skipped tier holds nothing of
/// the key, the others hold "v2", and a read that misses L1 finds "v2".
async fn assert_no_older_value_in(stack: &Stack<String>, cache: &Cache<String>, skipped: Source) {
    settle().await;
    for tier in [Source::L1, Source::L2, Source::L3] {
        let expected = (tier != skipped).then(|| "v2".to_owned());
        assert_eq!(
            held_in(stack, tier),
            expected,
            "{tier:?}, {skipped:?} skipped"
        );
    }
    stack.l1.remove(&key("k"));
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!(
        hit.as_str(),
        "v2",
        "{skipped:?} skipped, read from {:?}",
        hit.source()
    );
}

/// A `set_with` that skips a tier removes the key's older value from it: no read, after an L1
/// eviction or not, finds the value the set replaced.
#[tokio::test(start_paused = true)]
async fn a_set_that_skips_a_tier_removes_the_older_value_from_it() {
    for skipped in [Source::L1, Source::L2, Source::L3] {
        let stack = Stack::<String>::new();
        let cache = stack.cache();
        cache.set("k", "v1".to_owned()).await.unwrap();
        stack.clock.advance(Duration::from_secs(1));
        cache
            .set_with("k", "v2".to_owned(), &skipping(skipped))
            .await
            .unwrap();
        assert_no_older_value_in(&stack, &cache, skipped).await;
    }
}

/// A loaded value that skips a tier (by the call's options, or by the loader's own answer)
/// removes the key's older value from it, as a `set` does.
#[tokio::test(start_paused = true)]
async fn a_loaded_value_that_skips_a_tier_removes_the_older_value_from_it() {
    for (skipped, by_loader) in [
        (Source::L1, false),
        (Source::L2, false),
        (Source::L3, false),
        (Source::L2, true),
        (Source::L3, true),
    ] {
        let stack = Stack::<String>::new();
        let cache = stack.cache();
        cache.set("k", "v1".to_owned()).await.unwrap();
        stack.clock.advance(Duration::from_secs(1));
        let options = if by_loader {
            skip_every_read()
        } else {
            skipping(skipped).or(&skip_every_read())
        };
        let hit = cache
            .get_or_fetch_with("k", &options, move |_| async move {
                let value = Fetched::value("v2".to_owned());
                Ok::<_, std::io::Error>(match (by_loader, skipped) {
                    (false, _) => value,
                    (true, Source::L2) => value.skip_l2_write(),
                    (true, _) => value.skip_l3_write(),
                })
            })
            .await
            .unwrap();
        assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v2"));
        assert_no_older_value_in(&stack, &cache, skipped).await;
    }
}

/// An absent answer remembered (`negative_ttl`) that skips a remote tier removes the key's older
/// value from it.
#[tokio::test(start_paused = true)]
async fn an_absent_answer_that_skips_a_tier_removes_the_older_value_from_it() {
    for skipped in [Source::L2, Source::L3] {
        let stack = Stack::<String>::new();
        let cache = stack.cache();
        cache.set("k", "v1".to_owned()).await.unwrap();
        stack.clock.advance(Duration::from_secs(1));
        let options = skipping(skipped)
            .or(&skip_every_read())
            .negative_ttl(MINUTE);
        let answer = cache
            .get_or_fetch_with("k", &options, |_| async {
                Ok::<_, std::io::Error>(Fetched::absent())
            })
            .await;
        assert!(matches!(answer, Err(CacheError::NotFound)), "{answer:?}");
        settle().await;
        assert_eq!(held_in(&stack, skipped), None, "{skipped:?} skipped");
        stack.l1.remove(&key("k"));
        assert!(
            cache.get("k").await.unwrap().is_none(),
            "{skipped:?} skipped"
        );
    }
}

/// A read that skips L1 (reads and writes) and finds in L2 the very entry L1 holds leaves
/// L1's entry: it is not older than what the read found.
#[tokio::test(start_paused = true)]
async fn a_read_skipping_l1_keeps_an_l1_entry_as_new_as_what_it_found() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    cache.set("k", "v1".to_owned()).await.unwrap();
    settle().await;
    let calls = Calls::default();
    let options = FetchOptions::new().skip_l1_read(true).skip_l1_write(true);
    let hit = cache
        .get_or_fetch_with("k", &options, instant(&calls, "loaded"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "v1"));
    assert_eq!(stack.l1_value("k").as_deref(), Some("v1"));
    assert_eq!((stack.l1.removes(), calls.get()), (0, 0));
}
