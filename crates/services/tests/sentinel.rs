//! A private sentinel deployment: start, a failover with the old primary alive, and Drop.

use std::path::Path;
use std::time::{Duration, Instant};

use tierkit_services::{RedisBinaries, RedisSentinel};

/// Whether process `pid` still exists (a zombie counts: it was not reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_failover_promotes_the_replica_while_the_old_primary_runs() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let started = Instant::now();
    let deployment = RedisSentinel::start(&binaries).unwrap();
    eprintln!("sentinel deployment settled in {:?}", started.elapsed());
    let sentinel_port = deployment.sentinel().port();
    assert_eq!(
        deployment.url(),
        format!("redis-sentinel://127.0.0.1:{sentinel_port}?sentinelServiceName=mymaster")
    );
    let info = deployment.sentinel().command(&["INFO", "server"]).unwrap();
    assert!(info.contains("redis_mode:sentinel"), "{info}");
    assert_eq!(deployment.primary().unwrap(), 0);
    let [primary, replica] = deployment.servers() else {
        panic!("two servers");
    };
    assert_eq!(primary.command(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(primary.command(&["WAIT", "1", "5000"]).unwrap(), "1");
    assert_eq!(replica.command(&["GET", "k"]).unwrap(), "v");

    let started = Instant::now();
    deployment.failover().unwrap();
    // The sentinel names the replica once promoted; it demotes the old primary only after it
    // reads the old primary's role again (INFO every 10 s), which this test does not wait for.
    while deployment.primary().unwrap() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no failover within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("replica promoted in {:?}", started.elapsed());
    assert_eq!(
        replica.command(&["ROLE"]).unwrap().lines().next(),
        Some("master")
    );
    assert!(primary.is_running(), "the old primary stays alive");
    assert_eq!(replica.command(&["GET", "k"]).unwrap(), "v");

    let pids: Vec<u32> = deployment
        .servers()
        .iter()
        .chain([deployment.sentinel()])
        .filter_map(|server| server.pid())
        .collect();
    assert_eq!(pids.len(), 3);
    drop(deployment);
    for pid in pids {
        assert!(!process_exists(pid), "process {pid} survived Drop");
    }
}
