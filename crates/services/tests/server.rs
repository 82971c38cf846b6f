//! A standalone private server: start, commands, stop, restart on the same port, Drop.

use std::path::Path;
use std::time::Instant;

use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions, Reply, ServiceError};

/// Whether process `pid` still exists (a zombie counts: it was not reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn starts_answers_stops_and_restarts_on_the_same_port() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let started = Instant::now();
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).unwrap();
    eprintln!("standalone server started in {:?}", started.elapsed());
    let port = server.port();
    assert_ne!(port, 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.addr().to_string(), format!("127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(server.dir().join("redis.log").is_file());

    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
    assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(server.command(&["GET", "k"]).unwrap(), "v");
    assert_eq!(server.command(&["DBSIZE"]).unwrap(), "1");
    let info = server.command(&["INFO", "server"]).unwrap();
    let pid = server.pid().unwrap();
    assert!(info.contains(&format!("process_id:{pid}")), "{info}");
    assert!(info.contains(&format!("tcp_port:{port}")), "{info}");
    // DEBUG is enabled from loopback, for tests that need a slow server.
    assert_eq!(server.command(&["DEBUG", "SLEEP", "0"]).unwrap(), "OK");

    // Raw bytes, not UTF-8, in keys and values.
    let garbage: &[u8] = &[0xff, 0x00, b'\r', b'\n', 0xc3];
    let set: [&[u8]; 3] = [b"SET", b"bin\xfe", garbage];
    assert_eq!(server.command(&set).unwrap(), "OK");
    let get: [&[u8]; 2] = [b"GET", b"bin\xfe"];
    assert_eq!(server.query(&get).unwrap(), Reply::Bulk(garbage.to_vec()));
    assert_eq!(server.query(&["GET", "missing"]).unwrap(), Reply::Nil);

    // An error reply names the command and the server's message.
    let err = server.command(&["INCR", "k"]).unwrap_err();
    assert!(matches!(err, ServiceError::Redis { .. }), "{err:?}");
    assert!(err.to_string().contains("INCR k"), "{err}");
    assert!(err.to_string().contains("not an integer"), "{err}");

    server.stop().unwrap();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!process_exists(pid), "redis-server {pid} survived stop()");
    let err = server.command(&["PING"]).unwrap_err();
    assert!(matches!(err, ServiceError::NotRunning { .. }), "{err:?}");
    server.stop().unwrap(); // stopping twice is fine

    let restarted = Instant::now();
    server.restart().unwrap();
    eprintln!("restarted in {:?}", restarted.elapsed());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
    // No persistence: the data is gone.
    assert_eq!(server.command(&["DBSIZE"]).unwrap(), "0");

    // Restarting a running server replaces its process.
    let before = server.pid().unwrap();
    server.restart().unwrap();
    assert!(!process_exists(before));
    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
}

#[test]
fn drop_kills_the_process_and_removes_its_directory() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    assert!(process_exists(pid));
    drop(server);
    assert!(!process_exists(pid), "redis-server {pid} survived Drop");
    assert!(!dir.exists(), "{} survived Drop", dir.display());
}

#[test]
fn a_server_that_dies_counts_as_stopped() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).unwrap();
    // SHUTDOWN closes the connection without a reply.
    let _ = server.command(&["SHUTDOWN", "NOSAVE"]);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while server.is_running() {
        assert!(Instant::now() < deadline, "redis-server did not shut down");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.restart().unwrap();
    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
}

#[test]
fn a_bad_option_fails_with_the_log_tail() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let base = std::env::temp_dir().join(format!("tierkit-services-bad-{}", std::process::id()));
    let options = RedisServerOptions::new()
        .args(["--no-such-option", "yes"])
        .base_dir(&base);
    let err = RedisServer::start(&binaries, options).unwrap_err();
    assert!(matches!(err, ServiceError::Exited { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("exited while starting"), "{message}");
    assert!(message.contains("no-such-option"), "{message}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn extra_arguments_reach_the_server() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let options = RedisServerOptions::new().args(["--maxmemory", "12mb"]);
    let server = RedisServer::start(&binaries, options).unwrap();
    let reply = server.command(&["CONFIG", "GET", "maxmemory"]).unwrap();
    assert_eq!(reply, format!("maxmemory\n{}", 12 << 20));
    assert_eq!(server.bus_port(), None);
}

#[test]
fn handles_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisServer>();
    assert_send_sync::<tierkit_services::RedisCluster>();
    assert_send_sync::<RedisBinaries>();
    assert_send_sync::<ServiceError>();
}

#[test]
fn a_paused_server_answers_nothing_until_resumed() {
    let Some(binaries) = RedisBinaries::for_tests().unwrap_or_else(|err| panic!("{err}")) else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).unwrap();
    let pid = server.pid().unwrap();
    server.pause().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        state
            .lines()
            .any(|line| line.starts_with("State:") && line.contains('T')),
        "{state}"
    );
    server.resume().unwrap();
    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
    server.pause().unwrap();
    drop(server); // dropping a frozen server kills it
    assert!(
        !process_exists(pid),
        "redis-server {pid} survived drop while paused"
    );
}
