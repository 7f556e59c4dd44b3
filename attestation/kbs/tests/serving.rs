//! How the server holds up: the cap on concurrent connections, and blocking work (SQLite,
//! crypto) kept off the async runtime's worker threads.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Sends a whole `GET /kbs/v0/` on `s` and waits up to `wait` for the status line.
fn index_answered_within(s: &mut TcpStream, addr: &str, wait: Duration) -> bool {
    write!(
        s,
        "GET /kbs/v0/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 12];
    match s.read_exact(&mut buf) {
        Ok(()) => {
            assert!(buf.starts_with(b"HTTP/1.1 401"), "{buf:?}");
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let kbs = Kbs::start(KbsOptions {
        extra_args: vec!["--max-connections".into(), "2".into()],
        ..Default::default()
    });
    // Two connections that sent half a request hold both slots.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&kbs.addr).unwrap();
            s.write_all(b"GET /kbs/v0/ HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&kbs.addr).unwrap();
    assert!(
        !index_answered_within(&mut third, &kbs.addr, Duration::from_millis(1500)),
        "a third connection was served while two held the cap"
    );
    // Closing one frees a slot: the waiting connection is served.
    drop(held);
    assert!(index_answered_within(
        &mut third,
        &kbs.addr,
        Duration::from_secs(5)
    ));
}

#[test]
fn a_slow_database_does_not_stall_other_requests() {
    // One worker thread: blocking work on it would stall every other connection.
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        env: vec![("TOKIO_WORKER_THREADS".into(), "1".into())],
        ..Default::default()
    });
    // Another writer holds the database: the broker's next write waits (busy timeout 5 s).
    let holder = rusqlite::Connection::open(kbs.db()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let addr = kbs.addr.clone();
    let writer = std::thread::spawn(move || {
        let body = mkcw_body("slow", &hex::encode([7u8; 48]), "pw", 15);
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = krun_attestation::http::HttpRequest {
            method: "POST",
            host: &addr,
            path: "/kbs/v0/register_workload",
            headers: &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            body: Some(body.as_bytes()),
        };
        krun_attestation::http::exchange(&mut s, &req, 1 << 20)
            .unwrap()
            .status
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut s = TcpStream::connect(&kbs.addr).unwrap();
    assert!(
        index_answered_within(&mut s, &kbs.addr, Duration::from_secs(3)),
        "no answer while a database call was waiting"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(writer.join().unwrap(), 200);
}
