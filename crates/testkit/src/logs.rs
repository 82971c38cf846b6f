//! [`capture`]: the log output of the current thread, for tests that assert what a tier or a
//! composition logs (a warning naming the failed tier, no error line...).

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// A capture's buffer and the level from which it records.
type Target = (Arc<Mutex<Vec<u8>>>, Level);

/// Log output captured from the current thread while its guard lives.
pub struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    /// The capture this one replaced on its thread, put back when it is dropped.
    previous: Option<Target>,
    /// Set only where the process-wide subscriber could not be installed.
    _fallback: Option<tracing::subscriber::DefaultGuard>,
}

thread_local! {
    /// Where this thread's events go, and from which level on.
    static CURRENT: RefCell<Option<Target>> = const { RefCell::new(None) };
}

/// A writer appending to a capture's buffer, or discarding (no capture on the thread, or an
/// event below its level).
struct BufferWriter(Option<Arc<Mutex<Vec<u8>>>>);

impl io::Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(buffer) = &self.0 {
            buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands each event to the capture of the thread that emits it.
struct ThreadCaptures;

impl<'a> MakeWriter<'a> for ThreadCaptures {
    type Writer = BufferWriter;

    fn make_writer(&'a self) -> Self::Writer {
        BufferWriter(CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .map(|(buffer, _)| Arc::clone(buffer))
        }))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        BufferWriter(CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .filter(|(_, level)| meta.level() <= level)
                .map(|(buffer, _)| Arc::clone(buffer))
        }))
    }
}

/// Installs, once per process, the subscriber that routes every event to the capture of its
/// thread. One process-wide subscriber that is interested in everything, rather than a
/// subscriber per capture: with per-thread subscribers, tracing's cache of which call sites
/// anyone listens to can be computed while another test's thread registers or drops its own,
/// and a capture then sees nothing. Returns whether it is installed (it is not when the
/// process set another global subscriber).
fn routed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ThreadCaptures)
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_span_events(FmtSpan::NEW)
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    })
}

/// Captures every event (and every new span, with its fields) at `level` or above emitted
/// on this thread until the returned [`Capture`] is dropped. Use it in a current-thread
/// runtime so that every task logs on this thread.
///
/// ```
/// use tierkit_testkit::logs::capture;
///
/// let logs = capture(tracing::Level::WARN);
/// tracing::warn!(tier = %"l2 (redis)", "write failed on one tier");
/// tracing::debug!("not captured at WARN");
/// logs.assert_lines(1, &["WARN", "tier=l2 (redis)"]);
/// logs.assert_no_line("DEBUG");
/// ```
#[must_use]
pub fn capture(level: Level) -> Capture {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let previous = CURRENT.with(|current| current.replace(Some((Arc::clone(&buffer), level))));
    let fallback = (!routed()).then(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ThreadCaptures)
            .with_max_level(level)
            .with_ansi(false)
            .without_time()
            .with_span_events(FmtSpan::NEW)
            .finish();
        tracing::subscriber::set_default(subscriber)
    });
    Capture {
        buffer,
        previous,
        _fallback: fallback,
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

impl Capture {
    /// Everything captured so far.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// The captured lines that contain every one of `parts`.
    #[must_use]
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts that exactly `count` captured lines contain every one of `parts`.
    ///
    /// # Panics
    ///
    /// Otherwise, showing everything captured.
    pub fn assert_lines(&self, count: usize, parts: &[&str]) {
        let found = self.lines_with(parts).len();
        assert_eq!(
            found,
            count,
            "expected {count} log line(s) containing {parts:?}, found {found}; captured:\n{}",
            self.text()
        );
    }

    /// Asserts that some captured line contains every one of `parts`.
    ///
    /// # Panics
    ///
    /// Otherwise, showing everything captured.
    pub fn assert_line(&self, parts: &[&str]) {
        assert!(
            !self.lines_with(parts).is_empty(),
            "no log line contains all of {parts:?}; captured:\n{}",
            self.text()
        );
    }

    /// Asserts that no captured line contains `part`.
    ///
    /// # Panics
    ///
    /// Otherwise, showing everything captured.
    pub fn assert_no_line(&self, part: &str) {
        assert!(
            self.lines_with(&[part]).is_empty(),
            "unexpected log line containing {part:?}; captured:\n{}",
            self.text()
        );
    }
}
