//! Counts the warnings and errors tierkit logs, instead of printing them: during a Redis
//! outage every write logs one, which would bury the live display. The summary reports the
//! counts, and the acts quote the latest one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The counts, shared with the layer.
#[derive(Default)]
pub struct Warnings {
    warnings: AtomicU64,
    errors: AtomicU64,
    latest: Mutex<Option<String>>,
}

impl Warnings {
    /// Warnings logged so far.
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Relaxed)
    }

    /// Errors logged so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// The latest warning or error, rendered as `message field=value ...`.
    pub fn latest(&self) -> Option<String> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The `tracing` layer that feeds [`Warnings`].
pub struct CountingLayer(pub Arc<Warnings>);

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let counter = if level == Level::ERROR {
            &self.0.errors
        } else if level == Level::WARN {
            &self.0.warnings
        } else {
            return;
        };
        counter.fetch_add(1, Relaxed);
        let mut rendered = Render::default();
        event.record(&mut rendered);
        let mut text = rendered.message;
        text.push_str(&rendered.fields);
        if text.len() > 240 {
            let mut end = 240;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        *self.0.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
    }
}

/// An event's message and fields as one line.
#[derive(Default)]
struct Render {
    message: String,
    fields: String,
}

impl Visit for Render {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}
