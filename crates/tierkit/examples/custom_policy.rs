//! A read policy of your own, plugged into a `Composition`: hedged reads.
//!
//! A composition delegates every read that is not an L1 hit answered synchronously to its
//! `ReadPolicy`. The policy receives each tier's read as a closure (call it at most once) and a
//! `PolicyContext` (tier names, the operation's time, the offload), and returns a
//! `ReadOutcome`: the value, the tier it came from, and whether L1 should be refilled. It
//! knows nothing else of the tiers, so it can also be called with plain futures, which is how
//! it is tested.
//!
//! `HedgedReadPolicy` asks L1 first. When L1 answers within `delay`, it behaves like the
//! sequential read; when L1 is slow, it asks L2 as well and takes the first fresh hit. That
//! suits a remote L1 with rare latency spikes in front of a slower, steadier L2 (Redis over
//! S3, say): the tail latency is cut for the price of an L2 request on slow reads only.
//!
//! The example also shows the other extension point, a `Backend` wrapper: `Latency` adds a
//! configurable delay to a tier, so two moka caches stand in for remote tiers and no server
//! is needed.
//!
//! Run it with `cargo run -p tierkit --example custom_policy`.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tierkit::moka::MokaBackend;
use tierkit::{
    Backend, BackendError, CacheKey, CacheValue, Clock, Composition, GetFuture, Layer,
    PolicyContext, Probe, ReadOutcome, ReadPolicy, TierFuture, TierName, TierPath, TierRead,
    TokioOffload, WriteFuture, policy::TierOp,
};

// ---------------------------------------------------------------------------------------------
// The policy

/// Reads L1; if L1 has not answered within `delay`, reads L2 as well and returns the first
/// fresh hit.
///
/// | L1 | returns | L2 asked |
/// |---|---|---|
/// | fresh hit within `delay` | L1's value | no |
/// | stale hit, miss or error within `delay` | the better of both answers (as the sequential read) | yes, after L1 |
/// | no answer within `delay` | the first fresh hit of either tier; else the better of both answers | yes, at `delay` |
#[derive(Clone, Copy, Debug)]
struct HedgedReadPolicy {
    delay: Duration,
}

impl ReadPolicy for HedgedReadPolicy {
    /// A fresh hit that L1 answers synchronously (an in-process L1) ends the read before the
    /// policy is asked, as with the sequential read.
    fn l1_fresh_hit_is_final(&self) -> bool {
        true
    }

    async fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<ReadOutcome, BackendError>
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>,
    {
        let now = cx.now();
        let mut first = Box::pin(l1.start());
        let early = tokio::time::timeout(self.delay, &mut first).await;
        if let Ok(answer) = early {
            // L1 answered in time: a fresh hit is final, anything else asks L2.
            return match answer {
                Ok(Some(value)) if value.is_fresh(now) => {
                    Ok(ReadOutcome::found(Layer::L1, value, false))
                }
                answer => ReadOutcome::combine(cx, answer, l2.start().await),
            };
        }
        tracing::debug!(tier = %cx.l1(), delay = ?self.delay, "slow tier: hedging to the other");
        let mut second = Box::pin(l2.start());
        tokio::select! {
            biased;
            answer = &mut first => match answer {
                Ok(Some(value)) if value.is_fresh(now) => Ok(ReadOutcome::found(Layer::L1, value, false)),
                answer => ReadOutcome::combine(cx, answer, second.await),
            },
            answer = &mut second => match answer {
                // L1's state is unknown (it has not answered): no refill. Dropping `first`
                // cancels L1's read.
                Ok(Some(value)) if value.is_fresh(now) => Ok(ReadOutcome::found(Layer::L2, value, false)),
                answer => ReadOutcome::combine(cx, first.await, answer),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A Backend wrapper

/// Any tier, with a delay added to every read and a count of its reads: a stand-in for a
/// remote tier. It never answers synchronously (`probe` keeps the default, `Unknown`).
#[derive(Clone, Debug)]
struct Latency<B> {
    inner: B,
    label: &'static str,
    delay_ms: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
}

impl<B: Backend> Latency<B> {
    fn new(inner: B, label: &'static str, delay: Duration) -> Self {
        let tier = Latency {
            inner,
            label,
            delay_ms: Arc::default(),
            reads: Arc::default(),
        };
        tier.set_delay(delay);
        tier
    }

    fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(millis, Ordering::SeqCst);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl<B: Backend> Backend for Latency<B> {
    fn label(&self) -> &str {
        self.label
    }

    fn probe(&self, _key: &CacheKey) -> Probe {
        Probe::Unknown
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let delay = Duration::from_millis(self.delay_ms.load(Ordering::SeqCst));
        TierFuture::pending(async move {
            tokio::time::sleep(delay).await;
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

// ---------------------------------------------------------------------------------------------
// The example

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    let policy = HedgedReadPolicy {
        delay: Duration::from_millis(20),
    };

    step("1. the policy alone, called with plain futures (as in a unit test)");
    let offload = TokioOffload::unbounded();
    let cx = PolicyContext::new(
        TierName {
            path: "l1",
            label: "a",
        },
        TierName {
            path: "l2",
            label: "b",
        },
        Clock::System.now(),
        &offload,
    );
    let value = CacheValue::with_ttl(&b"from b"[..], cx.now(), Duration::from_secs(60));
    let found = value.clone();
    let answer = policy
        .read(
            &cx,
            || async { Ok(None) },
            move || async move { Ok(Some(found)) },
        )
        .await?;
    println!(
        "   L1 misses, L2 hits: source {:?}, refill L1: {}",
        answer.source, answer.refill_l1
    );

    // Two tiers that answer after a delay: "near" (2 ms, with spikes below) over "far" (30 ms).
    let near = Latency::new(MokaBackend::new(10_000), "near", Duration::from_millis(2));
    let far = Latency::new(MokaBackend::new(100_000), "far", Duration::from_millis(30));
    let cache = Composition::builder(near.clone(), far.clone())
        .read_policy(policy)
        .build();
    let key = CacheKey::builder("report").part(7).build()?;
    let value = CacheValue::with_ttl(
        &b"quarterly"[..],
        Clock::System.now(),
        Duration::from_secs(60),
    );
    cache.set(&key, value).await?; // both tiers (the default write policy)

    step("2. L1 answers in 2 ms: L2 is not asked");
    timed_read(&cache, &key, &far).await?;

    step("3. L1 stalls for 500 ms: at 20 ms L2 is asked, and answers first");
    near.set_delay(Duration::from_millis(500));
    timed_read(&cache, &key, &far).await?;

    step("4. L1 misses within 20 ms: L2 is asked, its value is refilled into L1");
    near.set_delay(Duration::from_millis(2));
    near.delete(&key).await?;
    timed_read(&cache, &key, &far).await?;
    println!(
        "   L1 holds it again: {}",
        near.inner.probe(&key).value().is_some()
    );

    println!("\ndone.");
    Ok(())
}

async fn timed_read<B1, B2>(
    cache: &Composition<B1, B2, HedgedReadPolicy>,
    key: &CacheKey,
    far: &Latency<MokaBackend>,
) -> Result<(), BackendError>
where
    B1: Backend,
    B2: Backend,
{
    let before = far.reads();
    let began = Instant::now();
    let value = cache.get(key).await?;
    println!(
        "   {:?} in {} ms; L2 reads: {}",
        value.map(|v| String::from_utf8_lossy(v.payload()).into_owned()),
        began.elapsed().as_millis(),
        far.reads() - before
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n{title}");
}
