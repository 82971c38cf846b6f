//! Time rows against the services: G2, G2c (reads served by Redis), G4, G4s (writes through
//! moka and Redis), G8 (reads and writes that reach S3).
//!
//! Both sides of every ratio do the same work on the wire: the raw side sends the Redis key
//! the tier uses (`namespace:` and the key's bytes) and the envelope bytes the tier stores
//! (encoded once, ahead of the timing), through the tier's own fred client, and reads or
//! writes the tier's S3 object through the tier's own S3 client.

use std::future::Future;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use fred::interfaces::KeysInterface;
use tierkit_core::{Backend, envelope};
use tierkit_moka::MokaBackend;
use tierkit_policy::{
    Composition, OptimisticParallelWritePolicy, RefillPolicy, SequentialWritePolicy,
};
use tokio::runtime::Runtime;

use super::{PER_CALL, Services, key, namespace, on, pxat, redis_plan, s3_plan, value};
use crate::local::{L2HitFixture, first_client, raw_moka};
use crate::{Plan, Row, ratio};

/// Entries of every moka cache here.
const CAPACITY: u64 = 10_000;

/// Tasks of G2c, all on one fred client.
const TASKS: usize = 100;

/// Reads per task in one G2c burst (2,000 reads per burst).
const READS_PER_TASK: usize = 20;

/// Measures the time rows; a row whose setup fails is reported as a failing row.
pub(super) fn rows(plan: Plan, services: &Services, rows: &mut Vec<Row>) {
    let results = [
        (
            "G2",
            g2(plan, services, &services.current, "current_thread", rows),
        ),
        (
            "G2",
            g2(plan, services, &services.multi, "multi_thread", rows),
        ),
        ("G2c", g2c(plan, services, rows)),
        ("G4", g4(plan, services, rows)),
        ("G8", g8(plan, services, rows)),
    ];
    for (id, result) in results {
        if let Err(reason) = result {
            rows.push(Row::not_measured(id, reason));
        }
    }
}

fn moka_tier() -> MokaBackend {
    MokaBackend::builder().max_capacity(CAPACITY).build()
}

/// Checks that a setup step gave what the row relies on.
fn check(what: &str, ok: bool) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("setup check failed: {what}"))
    }
}

/// G2: an L1 miss served by Redis (moka over Redis, refill off so that every read misses L1)
/// vs a raw fred `GET` of the same key, through the same client, on `runtime`.
fn g2(
    plan: Plan,
    services: &Services,
    runtime: &Runtime,
    flavor: &str,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let tier = services.redis_tier(runtime, &namespace(&format!("g2-{flavor}")))?;
    let fixture = L2HitFixture::new(runtime, tier)?;
    let L2HitFixture {
        composed,
        key,
        value,
        client,
        redis_key,
    } = &fixture;
    let ours = runtime.block_on(composed.get(key));
    check(
        "the composition reads the value",
        matches!(&ours, Ok(Some(v)) if v == value),
    )?;
    let raw: Option<Bytes> = runtime
        .block_on(client.get(redis_key.clone()))
        .map_err(|err| err.to_string())?;
    check(
        "raw GET reads the bytes the tier stored",
        raw == Some(envelope::encode(value, key)),
    )?;
    check(
        "L1 stays empty",
        runtime.block_on(composed.l1().get(key)).ok() == Some(None),
    )?;
    let figure = ratio(
        redis_plan(plan),
        on(runtime, PER_CALL, async || {
            client.get::<Option<Bytes>, _>(redis_key.clone()).await
        }),
        on(runtime, PER_CALL, async || composed.get(key).await),
    );
    rows.push(Row::ratio(
        "G2",
        format!("L1 miss + Redis hit (moka over Redis) vs raw fred GET, {flavor}"),
        figure,
        1.05,
    ));
    fixture.shutdown(runtime);
    Ok(())
}

/// Runs `tasks` tasks made by `task` on `runtime` and waits for all of them.
fn burst<F, Fut>(runtime: &Runtime, tasks: usize, task: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    runtime.block_on(async {
        let handles: Vec<_> = (0..tasks).map(|_| tokio::spawn(task())).collect();
        for handle in handles {
            let _ = handle.await;
        }
    });
}

/// G2c: 100 concurrent tasks reading one key through one fred client, composed (L1 miss,
/// Redis hit) vs raw `GET`, on the multi-thread runtime. A time ratio: throughput of at least
/// 0.90x the raw one is a time ratio of at most 1/0.90.
fn g2c(plan: Plan, services: &Services, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = &services.multi;
    let tier = services.redis_tier(runtime, &namespace("g2c"))?;
    let fixture = L2HitFixture::new(runtime, tier)?;
    let L2HitFixture {
        composed,
        key,
        client,
        redis_key,
        ..
    } = &fixture;
    let raw_task = || {
        let (client, redis_key) = (client.clone(), redis_key.clone());
        async move {
            for _ in 0..READS_PER_TASK {
                let _ =
                    std::hint::black_box(client.get::<Option<Bytes>, _>(redis_key.clone()).await);
            }
        }
    };
    let ours_task = || {
        let (composed, key) = (composed.clone(), key.clone());
        async move {
            for _ in 0..READS_PER_TASK {
                let _ = std::hint::black_box(composed.get(&key).await);
            }
        }
    };
    // Bursts of 2,000 reads: 4 per batch in the quick plan, 20 in the full one.
    let bursts = Plan {
        pairs: plan.pairs,
        batch: (plan.batch / 5_000).max(4),
    };
    let figure = ratio(
        bursts,
        || burst(runtime, TASKS, &raw_task),
        || burst(runtime, TASKS, &ours_task),
    );
    rows.push(Row::throughput(
        "G2c",
        "100 tasks, one client: Redis-hit read throughput vs raw GET",
        figure,
        0.90,
    ));
    fixture.shutdown(runtime);
    Ok(())
}

/// G4 and G4s: writes through moka over Redis vs a raw moka insert and a raw fred `SET` of
/// the same key, envelope bytes and expiry; together (optimistic parallel write) and one
/// after the other (sequential write).
fn g4(plan: Plan, services: &Services, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = &services.current;
    let tier = services.redis_tier(runtime, &namespace("g4"))?;
    let (key, value) = (key("g4")?, value());
    let client = first_client(&tier)?;
    let redis_key = tier.redis_key(&key);
    let bytes = envelope::encode(&value, &key);
    let expiry = pxat(&value)?;
    let raw = raw_moka(CAPACITY);
    let parallel = Composition::builder(moka_tier(), tier.clone())
        .write_policy(OptimisticParallelWritePolicy)
        .build();
    let sequential = Composition::builder(moka_tier(), tier.clone())
        .write_policy(SequentialWritePolicy)
        .build();
    runtime
        .block_on(parallel.set(&key, value.clone()))
        .map_err(|err| err.to_string())?;
    let stored: Option<Bytes> = runtime
        .block_on(client.get(redis_key.clone()))
        .map_err(|err| err.to_string())?;
    check(
        "the raw SET writes the bytes the tier writes",
        stored == Some(bytes.clone()),
    )?;
    let raw_set = || {
        client.set::<(), _, _>(
            redis_key.clone(),
            bytes.clone(),
            Some(expiry.clone()),
            None,
            false,
        )
    };
    let figure = ratio(
        redis_plan(plan),
        on(runtime, PER_CALL, async || {
            let insert = async { raw.insert(key.clone(), value.clone()) };
            tokio::join!(insert, raw_set()).1
        }),
        on(runtime, PER_CALL, async || {
            parallel.set(&key, value.clone()).await
        }),
    );
    rows.push(Row::ratio(
        "G4",
        "parallel write moka+Redis vs raw moka insert and SET, joined",
        figure,
        1.05,
    ));
    let figure = ratio(
        redis_plan(plan),
        on(runtime, PER_CALL, async || {
            raw.insert(key.clone(), value.clone());
            raw_set().await
        }),
        on(runtime, PER_CALL, async || {
            sequential.set(&key, value.clone()).await
        }),
    );
    rows.push(Row::ratio(
        "G4s",
        "sequential write moka, Redis vs raw moka insert, then SET",
        figure,
        1.05,
    ));
    runtime.block_on(tier.shutdown());
    Ok(())
}

/// G8: moka over (Redis over S3), refill off: a read that misses L1 and L2 and is served by
/// S3, vs a raw fred `GET` (a miss) then a raw `GetObject` with its body collected; a write
/// of the three tiers (parallel) vs a raw moka insert and a raw `SET` joined with a raw
/// `PutObject` of the same bytes.
fn g8(plan: Plan, services: &Services, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = &services.current;
    let name = namespace("g8");
    let redis = services.redis_tier(runtime, &name)?;
    let s3 = services.s3_tier(runtime, &format!("{name}/"))?;
    let stack = Composition::builder(
        moka_tier(),
        Composition::builder(redis.clone(), s3.clone())
            .refill_policy(RefillPolicy::Never)
            .build(),
    )
    .refill_policy(RefillPolicy::Never)
    .build();
    let client = first_client(&redis)?;
    let s3_client = s3.client().clone();
    let bucket = s3.bucket().to_owned();
    let raw = raw_moka(CAPACITY);

    // Reads: the key is in S3 only.
    let (read_key, value) = (key("g8-read")?, value());
    runtime
        .block_on(s3.set(&read_key, value.clone()))
        .map_err(|err| err.to_string())?;
    let (read_redis_key, read_object) = (redis.redis_key(&read_key), s3.object_key(&read_key));
    let raw_read = async || {
        let l2 = client.get::<Option<Bytes>, _>(read_redis_key.clone()).await;
        let object = match s3_client
            .get_object()
            .bucket(&bucket)
            .key(&read_object)
            .send()
            .await
        {
            Ok(output) => output
                .body
                .collect()
                .await
                .ok()
                .map(|body| body.into_bytes()),
            Err(_) => None,
        };
        (l2.ok().flatten(), object)
    };
    let (l2, object) = runtime.block_on(raw_read());
    check(
        "the raw read misses Redis and finds the tier's object",
        l2.is_none() && object == Some(envelope::encode(&value, &read_key)),
    )?;
    let ours = runtime.block_on(stack.get(&read_key));
    check(
        "the stack reads the value from S3",
        matches!(&ours, Ok(Some(v)) if *v == value),
    )?;
    let figure = ratio(
        s3_plan(plan),
        on(runtime, 1, raw_read),
        on(runtime, 1, async || stack.get(&read_key).await),
    );
    rows.push(Row::ratio(
        "G8",
        "read from S3 (L1, L2 miss) vs raw GET miss, then GetObject",
        figure,
        1.10,
    ));

    // Writes: all three tiers.
    let write_key = key("g8-write")?;
    let (write_redis_key, write_object) = (redis.redis_key(&write_key), s3.object_key(&write_key));
    let redis_bytes = envelope::encode(&value, &write_key);
    let object_bytes = envelope::encode(&value, &write_key);
    let expiry = pxat(&value)?;
    let raw_write = async || {
        raw.insert(write_key.clone(), value.clone());
        let set = client.set::<(), _, _>(
            write_redis_key.clone(),
            redis_bytes.clone(),
            Some(expiry.clone()),
            None,
            false,
        );
        let put = s3_client
            .put_object()
            .bucket(&bucket)
            .key(&write_object)
            .content_type("application/octet-stream")
            .body(ByteStream::from(object_bytes.clone()))
            .send();
        let (set, put) = tokio::join!(set, put);
        (set.is_ok(), put.is_ok())
    };
    check(
        "the raw write reaches Redis and S3",
        runtime.block_on(raw_write()) == (true, true),
    )?;
    check(
        "the stack writes",
        runtime
            .block_on(stack.set(&write_key, value.clone()))
            .is_ok(),
    )?;
    let figure = ratio(
        s3_plan(plan),
        on(runtime, 1, raw_write),
        on(runtime, 1, async || {
            stack.set(&write_key, value.clone()).await
        }),
    );
    rows.push(Row::ratio(
        "G8",
        "write moka, Redis, S3 vs raw insert, SET joined with PutObject",
        figure,
        1.10,
    ));
    runtime.block_on(redis.shutdown());
    Ok(())
}
