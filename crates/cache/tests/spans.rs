//! Read-through behaviour 67: trace propagation from the callers' `tierkit.fetch` spans to the
//! flight's `tierkit.flight` span.
//!
//! A test binary of its own, with one test: tracing caches each callsite's interest
//! process-wide, so a callsite first reached by another test's thread (with no subscriber)
//! could be cached as uninteresting while this test's scoped subscriber is being installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use support::{Stack, settle};
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// One span seen by [`Spans`].
#[derive(Debug, Default)]
struct SpanRecord {
    name: &'static str,
    fields: HashMap<&'static str, String>,
    parent: Option<usize>,
    follows_from: Vec<usize>,
}

#[derive(Debug, Default)]
struct Seen {
    spans: Vec<SpanRecord>,
    /// Live span ids (which the registry reuses once closed) to their index in `spans`.
    live: HashMap<u64, usize>,
    /// Event messages, with the span current when they were emitted.
    events: Vec<(String, Option<usize>)>,
}

/// A layer recording every span with its fields (including those recorded later), its
/// parent and its follows-from links, and every event with its current span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            Some(parent.clone())
        } else {
            ctx.current_span().id().cloned()
        };
        let mut record = SpanRecord {
            name: attrs.metadata().name(),
            parent: parent.and_then(|parent| seen.live.get(&parent.into_u64()).copied()),
            ..SpanRecord::default()
        };
        attrs.record(&mut Fields(&mut record.fields));
        let index = seen.spans.len();
        seen.spans.push(record);
        seen.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        let index = seen.live[&id.into_u64()];
        values.record(&mut Fields(&mut seen.spans[index].fields));
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, _ctx: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        let (span, follows) = (seen.live[&span.into_u64()], seen.live[&follows.into_u64()]);
        seen.spans[span].follows_from.push(follows);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let mut seen = self.0.lock().unwrap();
        let current = ctx
            .current_span()
            .id()
            .and_then(|id| seen.live.get(&id.into_u64()).copied());
        seen.events
            .push((fields.remove("message").unwrap_or_default(), current));
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        self.0.lock().unwrap().live.remove(&id.into_u64());
    }
}

/// Behaviour 67: the flight runs in a `tierkit.flight` span (the loader's events are inside
/// it) that is not a child of any caller's span but follows from the `tierkit.fetch` span of
/// the caller that created it; each caller's `tierkit.fetch` span records `coalesced` and the
/// flight id.
#[tokio::test(start_paused = true)]
async fn b67_the_flight_span_follows_from_the_creator_and_waiters_record_the_flight() {
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let (open, mut gate) = watch::channel(false);

    let starter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_fetch("k", move || async move {
                    tracing::info!("loader running");
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, std::io::Error>("v".to_owned())
                })
                .await
        }
    });
    settle().await;
    let joiners: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("k", || async { Ok::<_, std::io::Error>("x".to_owned()) })
                    .await
            })
        })
        .collect();
    settle().await;
    open.send_replace(true);
    let a = starter.await.unwrap().unwrap();
    let mut waiters = Vec::new();
    for joiner in joiners {
        waiters.push(joiner.await.unwrap().unwrap());
    }
    settle().await;
    let id = a.flight_id().unwrap().to_string();
    assert!(waiters.iter().all(|hit| hit.is_coalesced()));

    let seen = spans.0.lock().unwrap();
    let named = |name: &str| -> Vec<usize> {
        (0..seen.spans.len())
            .filter(|&index| seen.spans[index].name == name)
            .collect()
    };
    let fetches = named("tierkit.fetch");
    assert_eq!(fetches.len(), 3, "one fetch span per caller: {seen:#?}");
    for &fetch in &fetches {
        assert_eq!(
            seen.spans[fetch].fields.get("flight_id"),
            Some(&id),
            "{seen:#?}"
        );
        assert_eq!(
            seen.spans[fetch].fields.get("cache").map(String::as_str),
            Some("cache")
        );
    }
    let creators: Vec<usize> = fetches
        .iter()
        .copied()
        .filter(|&fetch| {
            seen.spans[fetch]
                .fields
                .get("coalesced")
                .map(String::as_str)
                == Some("false")
        })
        .collect();
    let coalesced = fetches
        .iter()
        .filter(|&&fetch| {
            seen.spans[fetch]
                .fields
                .get("coalesced")
                .map(String::as_str)
                == Some("true")
        })
        .count();
    assert_eq!((creators.len(), coalesced), (1, 2), "{seen:#?}");

    let flights = named("tierkit.flight");
    assert_eq!(flights.len(), 1, "{seen:#?}");
    let flight = &seen.spans[flights[0]];
    assert_eq!(flight.fields.get("flight_id"), Some(&id));
    assert_eq!(
        flight.fields.get("source").map(String::as_str),
        Some("loader")
    );
    assert_eq!(
        flight.follows_from, creators,
        "linked to the creating caller's span"
    );
    assert_eq!(flight.parent, None, "detached from every caller");
    let loader_events: Vec<_> = seen
        .events
        .iter()
        .filter(|(message, _)| message == "loader running")
        .collect();
    assert_eq!(loader_events.len(), 1);
    assert_eq!(
        loader_events[0].1,
        Some(flights[0]),
        "the loader runs inside the flight span"
    );
}
