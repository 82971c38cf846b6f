//! [`FetchOptions`]: what a call may override, field by field, over the cache's defaults.

use std::time::Duration;

/// What happens to a flight whose callers have all gone away (dropped their futures or timed
/// out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbandonPolicy {
    /// The flight runs to completion, bounded by its background cap, and stores its result, so
    /// the next caller hits. The default.
    #[default]
    Continue,
    /// When the last caller goes away, the loader's cancellation token fires, the flight stops
    /// and stores nothing, and the key is free at once: a caller arriving after that starts a
    /// new flight and never joins the doomed one. A `set` during the flight also cancels it
    /// (its callers got the value set); after a `remove` the flight goes on for its callers
    /// and stores nothing.
    CancelWhenUnobserved,
}

/// When a loaded value reaches the remote tiers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WriteMode {
    /// Waiters are released once the value is in L1; the remote write-back runs once per
    /// flight in the background (on the cache's offload). The default.
    #[default]
    Background,
    /// Waiters are released only after the remote write-back finished (its failures are still
    /// only counted and logged, unless [`strict_tiers`](FetchOptions::strict_tiers) is on).
    AwaitBeforeReturn,
}

/// Options of a call or of a cache: every field is optional, and a call's `Some` overrides the
/// cache's defaults, which override the built-in defaults (given on each setter). Every value
/// of every field is accepted: durations up to `Duration::MAX` saturate, incoherent ones are
/// normalised (below), and no value makes a call panic.
///
/// ```
/// use std::time::Duration;
/// use tierkit_cache::FetchOptions;
///
/// let defaults = FetchOptions::new().ttl(Duration::from_secs(600));
/// let call = FetchOptions::new().hard_timeout(Duration::from_secs(2));
/// let effective = call.or(&defaults);
/// assert_eq!(effective.get_ttl(), Some(Duration::from_secs(600)));
/// assert_eq!(effective.get_hard_timeout(), Some(Duration::from_secs(2)));
/// ```
///
/// A flight runs with the options of the caller that started it; callers that join it keep
/// only their own [`hard_timeout`](FetchOptions::hard_timeout) (the flight key is the cache
/// key, never the options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FetchOptions {
    ttl: Option<Duration>,
    hard_timeout: Option<Duration>,
    background_completion: Option<bool>,
    background_cap: Option<Duration>,
    abandon: Option<AbandonPolicy>,
    write_mode: Option<WriteMode>,
    tier_timeout: Option<Duration>,
    strict_tiers: Option<bool>,
    strict_decode: Option<bool>,
    max_payload: Option<usize>,
    skip_l1_read: Option<bool>,
    skip_l1_write: Option<bool>,
    skip_l2_read: Option<bool>,
    skip_l2_write: Option<bool>,
    skip_l3_read: Option<bool>,
    skip_l3_write: Option<bool>,
    no_loader: Option<bool>,
    fail_safe: Option<bool>,
    fail_safe_max: Option<Duration>,
    fail_safe_throttle: Option<Duration>,
    soft_timeout: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    /// The eager-refresh threshold, as the bits of its `f64` (so options stay `Eq + Hash`).
    eager_refresh_bits: Option<u64>,
    refresh_backoff: Option<Duration>,
    negative_ttl: Option<Duration>,
    jitter_max: Option<Duration>,
    jitter_remote: Option<bool>,
    allow_stale: Option<bool>,
}

macro_rules! options {
    ($($(#[$doc:meta])* $field:ident / $getter:ident: $ty:ty;)*) => {
        impl FetchOptions {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = Some(value);
                    self
                }

                #[doc = concat!("The `", stringify!($field), "` set here, if any.")]
                pub fn $getter(&self) -> Option<$ty> {
                    self.$field
                }
            )*

            /// These options over `defaults`: every field set here wins, every other field
            /// comes from `defaults`.
            #[must_use]
            pub fn or(&self, defaults: &FetchOptions) -> FetchOptions {
                FetchOptions {
                    $($field: self.$field.or(defaults.$field),)*
                    eager_refresh_bits: self.eager_refresh_bits.or(defaults.eager_refresh_bits),
                }
            }
        }
    };
}

options! {
    /// How long a stored value stays fresh (its `stale_at` is `created_at + ttl`). Default 5
    /// minutes.
    ttl / get_ttl: Duration;
    /// How long a caller waits for a value, counted from its own arrival (also when it joins a
    /// flight started earlier). After it the caller gets [`CacheError::Timeout`]; the flight
    /// may go on (see [`background_completion`](FetchOptions::background_completion)).
    /// Default 30 seconds. Any length is accepted, up to `Duration::MAX`: 30 years or more
    /// means no deadline.
    ///
    /// [`CacheError::Timeout`]: crate::CacheError::Timeout
    hard_timeout / get_hard_timeout: Duration;
    /// Whether a flight goes on after its starter's hard timeout, until its background cap,
    /// and stores its result (default `true`). With `false`, the loader is cancelled at the
    /// hard timeout and nothing is stored.
    background_completion / get_background_completion: bool;
    /// The longest a flight may run, from its start: after it the loader is cancelled (its
    /// token fires and its future is dropped), nothing is stored, and the key is free again.
    /// Default 4 x the hard timeout; never less than the hard timeout.
    background_cap / get_background_cap: Duration;
    /// What happens to a flight whose callers all went away. Default
    /// [`AbandonPolicy::Continue`].
    abandon / get_abandon: AbandonPolicy;
    /// When the loaded value reaches the remote tiers. Default [`WriteMode::Background`].
    write_mode / get_write_mode: WriteMode;
    /// The longest a read of one remote tier may take; after it the read counts as a miss (an
    /// error with `strict_tiers`). Default 5 seconds.
    tier_timeout / get_tier_timeout: Duration;
    /// Whether a remote tier's failure (error or timeout) fails the call instead of counting
    /// as a miss. Default `false`.
    strict_tiers / get_strict_tiers: bool;
    /// Whether an entry that cannot be decoded fails the call instead of counting as a miss.
    /// Default `false`.
    strict_decode / get_strict_decode: bool;
    /// The largest encoded value written to the remote tiers; a larger one is kept in L1 only
    /// and counted. Default 1 MiB.
    max_payload / get_max_payload: usize;
    /// Skip the L1 lookup (the value found or loaded is still written to L1 unless
    /// `skip_l1_write`). Default `false`.
    skip_l1_read / get_skip_l1_read: bool;
    /// Do not write L1: the older entry it may hold for the key is removed instead (unless it
    /// is newer than the value written), so that no read finds it. Default `false`.
    skip_l1_write / get_skip_l1_write: bool;
    /// Do not read the first remote tier. Default `false`.
    skip_l2_read / get_skip_l2_read: bool;
    /// Do not write the first remote tier: the key is deleted from it instead, so that no
    /// older value outlives the one written. Default `false`.
    skip_l2_write / get_skip_l2_write: bool;
    /// Do not read the second remote tier. Default `false`.
    skip_l3_read / get_skip_l3_read: bool;
    /// Do not write the second remote tier: the key is deleted from it instead, so that no
    /// older value outlives the one written. Default `false`.
    skip_l3_write / get_skip_l3_write: bool;
    /// Never run a loader: a value in no tier is [`CacheError::NotFound`]. Default `false`.
    ///
    /// [`CacheError::NotFound`]: crate::CacheError::NotFound
    no_loader / get_no_loader: bool;
    /// Keep values past their freshness as a reserve, served (flagged stale) when the loader
    /// fails, panics or times out. Default `false`.
    fail_safe / get_fail_safe: bool;
    /// With `fail_safe`, how long after its write a value stays in every tier as a reserve:
    /// `expires_at = created_at + max(fail_safe_max, ttl)`. Fixed at the write: activations
    /// never extend it. Default 1 hour; raised to `ttl` when below it (with a warning).
    fail_safe_max / get_fail_safe_max: Duration;
    /// After a fail-safe activation, how long the reserve is served without calling the loader
    /// again (never past the value's `expires_at`). Default 30 seconds.
    fail_safe_throttle / get_fail_safe_throttle: Duration;
    /// With `fail_safe` and a stale value to serve, a caller waiting longer than this gets the
    /// stale value (flagged `SoftTimeout`) while the flight goes on and stores its result.
    /// Off by default; lowered to `hard_timeout` when above it (with a warning).
    soft_timeout / get_soft_timeout: Duration;
    /// For this long after a value stops being fresh, a read returns it at once (flagged
    /// `Revalidating`) and starts one background refresh of the key. Default zero (off).
    /// Clamped to the value's life after its freshness.
    stale_while_revalidate / get_stale_while_revalidate: Duration;
    /// How long a failed background refresh waits before a read may start another one.
    /// Default 10 seconds.
    refresh_backoff / get_refresh_backoff: Duration;
    /// How long a loader's [`Fetched::absent`](crate::Fetched::absent) is remembered (a
    /// tombstone in every tier): reads then answer "not found" without calling the loader.
    /// Default zero (not remembered).
    negative_ttl / get_negative_ttl: Duration;
    /// The largest random extension of a value's freshness in L1, so keys loaded together do
    /// not all go stale together. Never past the value's `expires_at`. Default 5% of `ttl`.
    jitter_max / get_jitter_max: Duration;
    /// Apply the jitter to the freshness stored in the remote tiers too. Default `false`.
    jitter_remote / get_jitter_remote: bool;
    /// Let [`get`](crate::Cache::get) return a value past its freshness but before its
    /// `expires_at`, flagged stale, instead of going to the remote tiers. Default `false`.
    allow_stale / get_allow_stale: bool;
}

impl FetchOptions {
    /// No option set: everything inherits.
    pub const fn new() -> Self {
        FetchOptions {
            ttl: None,
            hard_timeout: None,
            background_completion: None,
            background_cap: None,
            abandon: None,
            write_mode: None,
            tier_timeout: None,
            strict_tiers: None,
            strict_decode: None,
            max_payload: None,
            skip_l1_read: None,
            skip_l1_write: None,
            skip_l2_read: None,
            skip_l2_write: None,
            skip_l3_read: None,
            skip_l3_write: None,
            no_loader: None,
            fail_safe: None,
            fail_safe_max: None,
            fail_safe_throttle: None,
            soft_timeout: None,
            stale_while_revalidate: None,
            eager_refresh_bits: None,
            refresh_backoff: None,
            negative_ttl: None,
            jitter_max: None,
            jitter_remote: None,
            allow_stale: None,
        }
    }

    /// Eager refresh: a read after `ttl x threshold` (and before the value goes stale) returns
    /// the value at once and starts one background refresh of the key, so hot keys never go
    /// stale. `threshold` must be in (0, 1); any other value turns eager refresh off (with a
    /// warning). Off by default.
    #[must_use]
    pub fn eager_refresh(mut self, threshold: f64) -> Self {
        self.eager_refresh_bits = Some(threshold.to_bits());
        self
    }

    /// The eager-refresh threshold set here, if any.
    pub fn get_eager_refresh(&self) -> Option<f64> {
        self.eager_refresh_bits.map(f64::from_bits)
    }

    /// Every field resolved against the built-in defaults, then normalised; also returns the
    /// adjustments made.
    pub(crate) fn resolve(&self) -> (Resolved, Vec<Adjustment>) {
        let mut adjustments = Vec::new();
        let mut adjust = |field: &'static str, from: String, to: String| {
            adjustments.push(Adjustment { field, from, to });
        };
        let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
        let hard_timeout = self.hard_timeout.unwrap_or(DEFAULT_HARD_TIMEOUT);
        let background_cap = match self.background_cap {
            Some(cap) if cap < hard_timeout => {
                adjust(
                    "background_cap",
                    format!("{cap:?}"),
                    format!("{hard_timeout:?}"),
                );
                hard_timeout
            }
            Some(cap) => cap,
            None => hard_timeout.saturating_mul(DEFAULT_CAP_FACTOR),
        };
        let soft_timeout = match self.soft_timeout {
            Some(soft) if soft > hard_timeout => {
                adjust(
                    "soft_timeout",
                    format!("{soft:?}"),
                    format!("{hard_timeout:?}"),
                );
                Some(hard_timeout)
            }
            soft => soft,
        };
        let fail_safe = self.fail_safe.unwrap_or(false);
        let fail_safe_max = match self.fail_safe_max {
            Some(max) if max < ttl => {
                adjust("fail_safe_max", format!("{max:?}"), format!("{ttl:?}"));
                ttl
            }
            Some(max) => max,
            None => DEFAULT_FAIL_SAFE_MAX.max(ttl),
        };
        let stale_while_revalidate = self.stale_while_revalidate.unwrap_or(Duration::ZERO);
        // The reserve after freshness: fail-safe's horizon, else the SWR window alone.
        let stale_life = if fail_safe {
            fail_safe_max - ttl
        } else {
            stale_while_revalidate
        };
        let stale_while_revalidate = if stale_while_revalidate > stale_life {
            adjust(
                "stale_while_revalidate",
                format!("{stale_while_revalidate:?}"),
                format!("{stale_life:?}"),
            );
            stale_life
        } else {
            stale_while_revalidate
        };
        let eager_refresh = match self.eager_refresh_bits.map(f64::from_bits) {
            Some(threshold) if threshold > 0.0 && threshold < 1.0 => Some(threshold),
            Some(threshold) => {
                adjust("eager_refresh", format!("{threshold}"), "off".to_owned());
                None
            }
            None => None,
        };
        let resolved = Resolved {
            ttl,
            hard_timeout,
            background_completion: self.background_completion.unwrap_or(true),
            background_cap,
            abandon: self.abandon.unwrap_or_default(),
            write_mode: self.write_mode.unwrap_or_default(),
            tier_timeout: self.tier_timeout.unwrap_or(DEFAULT_TIER_TIMEOUT),
            strict_tiers: self.strict_tiers.unwrap_or(false),
            strict_decode: self.strict_decode.unwrap_or(false),
            max_payload: self.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            skip_l1_read: self.skip_l1_read.unwrap_or(false),
            skip_l1_write: self.skip_l1_write.unwrap_or(false),
            skip_l2_read: self.skip_l2_read.unwrap_or(false),
            skip_l2_write: self.skip_l2_write.unwrap_or(false),
            skip_l3_read: self.skip_l3_read.unwrap_or(false),
            skip_l3_write: self.skip_l3_write.unwrap_or(false),
            no_loader: self.no_loader.unwrap_or(false),
            fail_safe,
            fail_safe_max,
            fail_safe_throttle: self
                .fail_safe_throttle
                .unwrap_or(DEFAULT_FAIL_SAFE_THROTTLE),
            soft_timeout: soft_timeout.filter(|_| fail_safe),
            stale_while_revalidate,
            eager_refresh,
            refresh_backoff: self.refresh_backoff.unwrap_or(DEFAULT_REFRESH_BACKOFF),
            negative_ttl: self.negative_ttl.unwrap_or(Duration::ZERO),
            jitter_max: self.jitter_max.unwrap_or(ttl / DEFAULT_JITTER_DIVISOR),
            jitter_remote: self.jitter_remote.unwrap_or(false),
            allow_stale: self.allow_stale.unwrap_or(false),
        };
        (resolved, adjustments)
    }
}

/// The built-in freshness of a stored value.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The built-in hard timeout of a call.
pub const DEFAULT_HARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The built-in background cap is this many hard timeouts.
pub const DEFAULT_CAP_FACTOR: u32 = 4;
/// The built-in timeout of one remote tier read.
pub const DEFAULT_TIER_TIMEOUT: Duration = Duration::from_secs(5);
/// The built-in largest encoded value written to the remote tiers.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// The built-in fail-safe horizon (used only with `fail_safe`).
pub const DEFAULT_FAIL_SAFE_MAX: Duration = Duration::from_secs(3600);
/// The built-in fail-safe throttle.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);
/// The built-in wait after a failed background refresh.
pub const DEFAULT_REFRESH_BACKOFF: Duration = Duration::from_secs(10);
/// The built-in bound on the loader calls a cache runs at once, all keys together (see
/// [`CacheBuilder::max_concurrent_loads`](crate::CacheBuilder::max_concurrent_loads)).
pub const DEFAULT_MAX_CONCURRENT_LOADS: usize = 512;
/// The built-in number of keys whose fail-safe throttles a cache remembers apart from L1 (see
/// [`CacheBuilder::fail_safe_throttles`](crate::CacheBuilder::fail_safe_throttles)).
pub const DEFAULT_THROTTLE_CAPACITY: usize = 4096;
/// The built-in L1 jitter is the TTL divided by this (5%).
pub const DEFAULT_JITTER_DIVISOR: u32 = 20;

/// A normalisation of an incoherent option.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Adjustment {
    pub(crate) field: &'static str,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// Options with every field decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) ttl: Duration,
    pub(crate) hard_timeout: Duration,
    pub(crate) background_completion: bool,
    pub(crate) background_cap: Duration,
    pub(crate) abandon: AbandonPolicy,
    pub(crate) write_mode: WriteMode,
    pub(crate) tier_timeout: Duration,
    pub(crate) strict_tiers: bool,
    pub(crate) strict_decode: bool,
    pub(crate) max_payload: usize,
    pub(crate) skip_l1_read: bool,
    pub(crate) skip_l1_write: bool,
    pub(crate) skip_l2_read: bool,
    pub(crate) skip_l2_write: bool,
    pub(crate) skip_l3_read: bool,
    pub(crate) skip_l3_write: bool,
    pub(crate) no_loader: bool,
    pub(crate) fail_safe: bool,
    /// With `fail_safe`, the horizon of a write from its `created_at`.
    pub(crate) fail_safe_max: Duration,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) refresh_backoff: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) jitter_max: Duration,
    pub(crate) jitter_remote: bool,
    pub(crate) allow_stale: bool,
}

impl Resolved {
    /// How long the flight may run: the background cap, or the hard timeout when the flight
    /// must not outlive its starter's deadline.
    pub(crate) fn flight_limit(&self) -> Duration {
        if self.background_completion {
            self.background_cap
        } else {
            self.hard_timeout
        }
    }
}
