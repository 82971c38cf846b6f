//! A private Redis Cluster: creation, health, slots, failover and Drop.

use std::path::Path;
use std::time::{Duration, Instant};

use tierkit_services::{RedisBinaries, RedisCluster, ServiceError, key_slot};

/// Whether process `pid` still exists (a zombie counts: it was not reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn three_masters_serve_every_slot_and_agree_on_key_slots() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let started = Instant::now();
    let cluster = RedisCluster::start(&binaries, 3, 0).unwrap();
    eprintln!("3-master cluster healthy in {:?}", started.elapsed());

    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.masters().unwrap(), [0, 1, 2]);
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    assert_eq!(
        cluster.url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    for node in cluster.nodes() {
        assert!(node.bus_port().is_some());
        let info = node.command(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }

    let node = cluster.node(0).unwrap();
    let mut keys: Vec<Vec<u8>> = [
        &b"foo"[..],
        b"",
        b"user:42",
        b"{user1000}.following",
        b"{user1000}.followers",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
        b"{}",
        b"}{",
        b"{a",
        b"\xff\x00\xfe{\x80}",
        b"tierkit:v1:user:{42}:profile",
    ]
    .iter()
    .map(|key| key.to_vec())
    .collect();
    keys.extend((0..200).map(|i| format!("key-{i}").into_bytes()));
    for key in &keys {
        let expected = node.command(&[&b"CLUSTER"[..], b"KEYSLOT", key]).unwrap();
        assert_eq!(
            key_slot(key).to_string(),
            expected,
            "slot of {:?}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(RedisCluster::slot_of(key), key_slot(key));
    }
    assert_eq!(
        key_slot(b"{user1000}.following"),
        key_slot(b"{user1000}.followers")
    );

    // The master that serves a slot accepts its keys; the others redirect.
    for key in [&b"foo"[..], b"user:42", b"key-7"] {
        let owner = cluster.master_for_slot(key_slot(key)).unwrap().unwrap();
        let set: [&[u8]; 3] = [b"SET", key, b"v"];
        assert_eq!(cluster.node(owner).unwrap().command(&set).unwrap(), "OK");
        let other = (owner + 1) % 3;
        let err = cluster.node(other).unwrap().command(&set).unwrap_err();
        assert!(err.to_string().contains("MOVED"), "{err}");
    }
    let covered = (0..16384u16).step_by(97).all(|slot| {
        cluster
            .master_for_slot(slot)
            .unwrap()
            .is_some_and(|index| index < 3)
    });
    assert!(covered);
    assert_eq!(cluster.master_for_slot(16384).unwrap(), None);

    assert!(matches!(
        cluster.node(3),
        Err(ServiceError::InvalidArgument { .. })
    ));

    let pids: Vec<u32> = cluster
        .nodes()
        .iter()
        .filter_map(|node| node.pid())
        .collect();
    assert_eq!(pids.len(), 3);
    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "cluster node {pid} survived Drop");
    }
}

#[test]
fn a_replica_takes_over_a_killed_master() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let started = Instant::now();
    let cluster = RedisCluster::start(&binaries, 3, 1).unwrap();
    eprintln!("3+3 cluster healthy in {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    let masters = cluster.masters().unwrap();
    assert_eq!(masters.len(), 3);

    let slot = key_slot(b"failover");
    let old = cluster.master_for_slot(slot).unwrap().unwrap();
    assert!(masters.contains(&old));
    let killed = Instant::now();
    cluster.kill_node(old).unwrap();
    assert!(!cluster.node(old).unwrap().is_running());
    cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
    eprintln!("failover done in {:?}", killed.elapsed());
    let new = cluster.master_for_slot(slot).unwrap().unwrap();
    assert_ne!(new, old);
    assert!(cluster.masters().unwrap().contains(&new));

    // The old master comes back on its port and rejoins as a replica.
    cluster.restart_node(old).unwrap();
    cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
    assert_eq!(cluster.masters().unwrap().len(), 3);
    assert!(!cluster.masters().unwrap().contains(&old));
}

#[test]
fn too_few_masters_is_an_argument_error() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let err = RedisCluster::start(&binaries, 2, 0).unwrap_err();
    assert!(
        matches!(err, ServiceError::InvalidArgument { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least 3 masters"), "{err}");
}
