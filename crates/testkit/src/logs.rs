//! [`capture`]: the log output of the current thread, for tests that assert what a tier or a
//! composition logs (a warning naming the failed tier, no error line...).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Log output captured from the current thread while its guard lives.
pub struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

/// A [`MakeWriter`] appending to a shared buffer.
#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferWriter {
    type Writer = BufferWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
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
    let subscriber = tracing_subscriber::fmt()
        .with_writer(BufferWriter(Arc::clone(&buffer)))
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_span_events(FmtSpan::NEW)
        .finish();
    Capture {
        buffer,
        _guard: tracing::subscriber::set_default(subscriber),
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
