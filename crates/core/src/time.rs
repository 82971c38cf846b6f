//! Wall-clock instants with millisecond precision, and the clocks that produce them.
//!
//! Every tier, on every machine, must agree on when a value stops being fresh and when it
//! expires. That rules out `std::time::Instant` (meaningless outside the process that took it)
//! and calls for wall-clock time. tierkit stores instants as milliseconds since the Unix epoch:
//! the precision Redis offers for expiry (`PX`/`PXAT`) and enough for any cache TTL.
//!
//! Every TTL decision reads a [`Clock`], so tests can drive time by hand with a
//! [`ManualClock`] instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock instant: milliseconds since the Unix epoch (UTC).
///
/// Arithmetic saturates instead of overflowing, so a huge TTL means "practically never" rather
/// than a wrap-around into the past.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::Timestamp;
///
/// let t = Timestamp::from_unix_millis(1_000);
/// assert_eq!(t.saturating_add(Duration::from_millis(500)).as_unix_millis(), 1_500);
/// assert_eq!(t.saturating_duration_since(Timestamp::from_unix_millis(400)), Duration::from_millis(600));
/// assert_eq!(Timestamp::from_unix_millis(400).saturating_duration_since(t), Duration::ZERO);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);
    /// The latest representable instant; used as "never expires".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// An instant from milliseconds since the Unix epoch.
    #[must_use]
    pub const fn from_unix_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Converts a [`SystemTime`], truncating to the millisecond. Times before the epoch map to
    /// the epoch; times too far in the future map to [`Timestamp::MAX`].
    #[must_use]
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) => Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => Timestamp::UNIX_EPOCH,
        }
    }

    /// The instant as a [`SystemTime`].
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.0))
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)))
    }

    /// `self + duration`, truncated to the millisecond, saturating at [`Timestamp::MAX`].
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }

    /// `self - duration`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(millis))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A source of wall-clock time that a user can plug into a [`Clock`].
///
/// Implement it for a coarse clock (a cached timestamp updated by a ticker) when
/// `SystemTime::now()` shows up in profiles.
pub trait TimeSource: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The clock every TTL decision reads.
///
/// An enum rather than a trait object so that the common cases ([`Clock::System`] and
/// [`Clock::Manual`]) cost a branch, not an indirect call, on the hot path; [`Clock::Custom`]
/// keeps the set open.
///
/// [`Clock::System`], the default, reads the kernel's coarse wall clock where there is one
/// (`CLOCK_REALTIME_COARSE` on Linux and Android): the time of the last scheduler tick, read
/// without a system call, so at most one tick (1 to 4 ms) behind the precise clock. Every
/// L1 hit reads the clock once to check freshness, and a precise read can cost a fifth of a
/// whole in-process cache lookup on virtual machines whose clock source has no fast path;
/// cache lifetimes are seconds to days, so a few milliseconds of lag decide nothing.
/// [`Clock::Precise`] reads `SystemTime::now()` for whoever wants the exact millisecond.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Clock, ManualClock, Timestamp};
///
/// let manual = ManualClock::new(Timestamp::from_unix_millis(10_000));
/// let clock = Clock::from(manual.clone());
/// manual.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), Timestamp::from_unix_millis(15_000));
/// ```
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's wall clock, read coarsely where the kernel offers a coarse clock (at most
    /// one scheduler tick behind), else `SystemTime::now()`; truncated to the millisecond.
    #[default]
    System,
    /// `SystemTime::now()`, truncated to the millisecond.
    Precise,
    /// A clock moved by hand, for tests.
    Manual(ManualClock),
    /// Any other source.
    Custom(Arc<dyn TimeSource>),
}

impl Clock {
    /// The current instant according to this clock.
    #[inline]
    #[must_use]
    pub fn now(&self) -> Timestamp {
        // The default clock inline (every L1 hit reads it); the others out of line, so that
        // this stays small enough to inline into the hit path.
        match self {
            Clock::System => coarse_now(),
            other => other.now_out_of_line(),
        }
    }

    #[inline(never)]
    fn now_out_of_line(&self) -> Timestamp {
        match self {
            Clock::System => coarse_now(),
            Clock::Precise => Timestamp::from_system_time(SystemTime::now()),
            Clock::Manual(manual) => manual.now(),
            Clock::Custom(source) => source.now(),
        }
    }
}

/// The wall clock as of the last scheduler tick: `CLOCK_REALTIME_COARSE`, which the kernel
/// answers from the vDSO without entering the kernel.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_now() -> Timestamp {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    // Before the epoch (a badly set clock) maps to the epoch, as `from_system_time` does.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    Timestamp(secs.saturating_mul(1_000).saturating_add(millis))
}

/// Without a coarse kernel clock: the precise one.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn coarse_now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Clock::Manual(manual)
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_unix_millis(0));
/// clock.advance(Duration::from_millis(1_500));
/// assert_eq!(clock.now().as_unix_millis(), 1_500);
/// clock.set(Timestamp::from_unix_millis(42));
/// assert_eq!(clock.now().as_unix_millis(), 42);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(start.as_unix_millis())),
        }
    }

    /// A clock showing the current system time, frozen there until moved.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::new(Timestamp::from_system_time(SystemTime::now()))
    }

    /// The instant the clock shows.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.millis.load(Ordering::Acquire))
    }

    /// Moves the clock forward (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .millis
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_add(by))
            });
    }

    /// Sets the clock to `to`; it may move backwards, as a real wall clock can.
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_unix_millis(), Ordering::Release);
    }
}

impl TimeSource for ManualClock {
    fn now(&self) -> Timestamp {
        ManualClock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::from_unix_millis(5).saturating_sub(Duration::from_secs(1)),
            Timestamp::UNIX_EPOCH
        );
        assert_eq!(
            Timestamp::UNIX_EPOCH.saturating_add(Duration::MAX),
            Timestamp::MAX
        );
    }

    #[test]
    fn system_time_round_trip_to_the_millisecond() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        assert_eq!(
            Timestamp::from_system_time(UNIX_EPOCH - Duration::from_secs(1)),
            Timestamp::UNIX_EPOCH
        );
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(Clock::System.now() > Timestamp::from_unix_millis(1_577_836_800_000));
    }

    #[test]
    fn system_clock_is_at_most_a_few_ticks_behind_the_precise_one() {
        let precise_before = Clock::Precise.now();
        let coarse = Clock::System.now();
        let precise_after = Clock::Precise.now();
        // One tick is 1 to 4 ms; a descheduled thread can add more, never seconds.
        assert!(coarse <= precise_after, "{coarse} > {precise_after}");
        assert!(
            precise_before.saturating_duration_since(coarse) < Duration::from_secs(1),
            "{coarse} lags {precise_before} by a second or more"
        );
    }

    #[test]
    fn custom_clock_is_consulted() {
        let manual = ManualClock::new(Timestamp::from_unix_millis(7));
        let clock = Clock::Custom(Arc::new(manual.clone()));
        manual.advance(Duration::from_millis(3));
        assert_eq!(clock.now(), Timestamp::from_unix_millis(10));
    }
}
