//! Refill: copying a value found in L2 into L1.

use std::fmt;
use std::str::FromStr;

use crate::error::CompositionError;

/// Whether a value read from L2 is copied into L1.
///
/// A refill writes the value with its timestamps unchanged: it never extends a value's life,
/// so an entry refilled one second before its `expires_at` expires from L1 one second later.
/// A refill is awaited before the read returns (so the next read on this node hits L1), and
/// its failure never fails the read: it is logged as a warning and counted
/// (`tierkit_refill_total{result="error"}`).
///
/// The read policy says when a refill is due (see [`ReadOutcome::refill_l1`]): only when the
/// value came from L2 and L1 is known to have missed, failed, or held a worse value.
///
/// [`ReadOutcome::refill_l1`]: crate::ReadOutcome::refill_l1
///
/// ```
/// use tierkit_policy::RefillPolicy;
///
/// assert_eq!(RefillPolicy::default(), RefillPolicy::Always);
/// assert_eq!("never".parse::<RefillPolicy>()?, RefillPolicy::Never);
/// # Ok::<(), tierkit_policy::CompositionError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RefillPolicy {
    /// L1 only ever holds what was written to it.
    Never,
    /// Copy L2 hits into L1. **The default**: the next read of the key on this node is an L1
    /// hit.
    #[default]
    Always,
}

impl RefillPolicy {
    /// The name accepted by [`FromStr`].
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            RefillPolicy::Never => "never",
            RefillPolicy::Always => "always",
        }
    }
}

impl fmt::Display for RefillPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RefillPolicy {
    type Err = CompositionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "never" => Ok(RefillPolicy::Never),
            "always" => Ok(RefillPolicy::Always),
            _ => Err(CompositionError::UnknownPolicy {
                family: "refill",
                name: name.to_owned(),
                expected: "never, always",
            }),
        }
    }
}
