//! [`GatedBackend`]: a tier whose reads wait at a gate the test opens.

use tierkit_core::{
    Backend, CacheKey, CacheValue, GetFuture, Probe, TierFuture, TierPath, WriteFuture,
};
use tokio::sync::watch;

/// Wraps a tier so that its reads (`get`) wait until the gate opens (the watched value becomes
/// `true`, or its sender is dropped); writes, `probe` and everything else pass straight
/// through. A test holds a burst of concurrent callers at the read of a real tier, checks that
/// they all joined one flight, then opens the gate: the tier behind still sees exactly the
/// commands the callers' code issues.
///
/// ```
/// use tierkit_core::Backend;
/// use tierkit_testkit::{GatedBackend, MemoryBackend, key};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (open, gate) = tokio::sync::watch::channel(false);
/// let tier = GatedBackend::new(MemoryBackend::new("l2").remote(), gate);
/// let k = key("a");
/// let read = tier.get(&k);
/// open.send_replace(true);
/// assert_eq!(read.await.unwrap(), None);
/// # }
/// ```
#[derive(Debug)]
pub struct GatedBackend<B> {
    inner: B,
    gate: watch::Receiver<bool>,
}

impl<B> GatedBackend<B> {
    /// `inner`, with reads held until `gate` shows `true`.
    pub fn new(inner: B, gate: watch::Receiver<bool>) -> Self {
        GatedBackend { inner, gate }
    }
}

impl<B: Backend> Backend for GatedBackend<B> {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn probe(&self, key: &CacheKey) -> Probe {
        self.inner.probe(key)
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        let mut gate = self.gate.clone();
        TierFuture::pending(async move {
            // A dropped sender opens the gate too: whoever held it is done.
            let _ = gate.wait_for(|open| *open).await;
            self.inner.get(key).await
        })
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.inner.set(key, value)
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.inner.set_if_newer(key, value)
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        self.inner.delete(key)
    }

    fn clear(&self) -> WriteFuture<'_> {
        self.inner.clear()
    }

    fn bind(&self, path: &TierPath) {
        self.inner.bind(path);
    }
}
