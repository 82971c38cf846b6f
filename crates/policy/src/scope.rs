//! Per-tier names and metric handles, resolved once when a composition is bound to its place
//! in a stack.
//!
//! Metric handles are resolved from the global `metrics` recorder at that moment and kept, so
//! no operation pays for a registry lookup. Install the recorder before a cache's first
//! operation; handles resolved before any recorder is installed record nothing.

use std::sync::{Arc, OnceLock};

use metrics::Counter;
use tierkit_core::{BackendError, Op, TierPath};

use crate::context::TierName;

/// Metric names, shared by every composition.
pub(crate) mod names {
    /// Reads of a tier: labels `tier`, `backend`, `result` = `hit` | `miss` | `error`.
    pub const TIER_GET: &str = "tierkit_tier_get_total";
    /// Writes of a tier: labels `tier`, `backend`, `op` = `set` | `delete` | `clear`,
    /// `result` = `ok` | `error`.
    pub const TIER_WRITE: &str = "tierkit_tier_write_total";
    /// Refills of L1 from L2: labels `tier` (the refilled tier), `backend`, `result`.
    pub const REFILL: &str = "tierkit_refill_total";
}

/// A write-like operation's two counters.
#[derive(Debug)]
pub(crate) struct OkError {
    ok: Counter,
    error: Counter,
}

impl OkError {
    fn new(name: &'static str, path: &str, label: &str, op: Op) -> Self {
        let counter = |result: &'static str| {
            metrics::counter!(
                name,
                "tier" => path.to_owned(),
                "backend" => label.to_owned(),
                "op" => op.as_str(),
                "result" => result
            )
        };
        OkError {
            ok: counter("ok"),
            error: counter("error"),
        }
    }

    pub(crate) fn record(&self, result: &Result<(), BackendError>) {
        match result {
            Ok(()) => self.ok.increment(1),
            Err(_) => self.error.increment(1),
        }
    }
}

/// Everything a composition needs to name and count one of its tiers.
#[derive(Debug)]
pub(crate) struct TierScope {
    pub(crate) path: Arc<str>,
    pub(crate) label: Arc<str>,
    pub(crate) get_hit: Counter,
    pub(crate) get_miss: Counter,
    pub(crate) get_error: Counter,
    pub(crate) set: OkError,
    pub(crate) delete: OkError,
    pub(crate) clear: OkError,
    pub(crate) refill: OkError,
}

impl TierScope {
    pub(crate) fn new(path: &TierPath, label: &str) -> Self {
        let p = path.as_str();
        let get = |result: &'static str| {
            metrics::counter!(
                names::TIER_GET,
                "tier" => p.to_owned(),
                "backend" => label.to_owned(),
                "result" => result
            )
        };
        TierScope {
            path: Arc::from(p),
            label: Arc::from(label),
            get_hit: get("hit"),
            get_miss: get("miss"),
            get_error: get("error"),
            set: OkError::new(names::TIER_WRITE, p, label, Op::Set),
            delete: OkError::new(names::TIER_WRITE, p, label, Op::Delete),
            clear: OkError::new(names::TIER_WRITE, p, label, Op::Clear),
            refill: OkError::new(names::REFILL, p, label, Op::Set),
        }
    }

    pub(crate) fn name(&self) -> TierName<'_> {
        TierName {
            path: &self.path,
            label: &self.label,
        }
    }

    pub(crate) fn writes(&self, op: Op) -> &OkError {
        match op {
            Op::Delete => &self.delete,
            Op::Clear => &self.clear,
            _ => &self.set,
        }
    }
}

/// The names and counters of a composition's two tiers.
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) l1: TierScope,
    pub(crate) l2: TierScope,
}

/// Where a composition sits in a stack, and its scope there: bound as the root on first use
/// unless an outer composition bound it first, and bound again when it is nested later (a
/// composition used on its own before it is nested), so that every tier of a stack counts
/// under its own path whatever was called first.
///
/// The bindings form a chain, newest last; reading the current scope follows it (one atomic
/// load per link, and a composition is rebound at most a few times in its life). Older
/// scopes stay alive: an operation still running may use their handles. The chain is bounded
/// ([`Bindings::MAX`]); past that, the last binding stays.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    first: OnceLock<Box<Binding>>,
}

#[derive(Debug)]
struct Binding {
    at: TierPath,
    scope: Scope,
    next: OnceLock<Box<Binding>>,
}

impl Bindings {
    /// The most bindings a composition keeps.
    pub(crate) const MAX: usize = 16;

    /// The current scope; `make` builds the root scope if nothing bound the composition yet.
    #[inline(always)]
    pub(crate) fn current(&self, make: impl Fn(&TierPath) -> Scope) -> &Scope {
        let mut binding = self.first.get_or_init(|| bound(&TierPath::root(), &make));
        while let Some(next) = binding.next.get() {
            binding = next;
        }
        &binding.scope
    }

    /// Binds the composition at `path` (its scope built there by `make`), unless it is bound
    /// there already.
    pub(crate) fn bind(&self, path: &TierPath, make: impl Fn(&TierPath) -> Scope) {
        let mut slot = &self.first;
        for _ in 0..Self::MAX {
            let mut bound_here = false;
            let binding = slot.get_or_init(|| {
                bound_here = true;
                bound(path, &make)
            });
            if bound_here || binding.next.get().is_none() && binding.at == *path {
                return;
            }
            slot = &binding.next;
        }
        tracing::warn!(
            path = %path,
            "a composition was bound at too many places in a stack; keeping its last path"
        );
    }
}

fn bound(at: &TierPath, make: &impl Fn(&TierPath) -> Scope) -> Box<Binding> {
    Box::new(Binding {
        at: at.clone(),
        scope: make(at),
        next: OnceLock::new(),
    })
}
