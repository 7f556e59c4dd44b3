//! How the server holds up: the cap on concurrent connections, blocking work (SQLite,
//! crypto) kept off the async runtime's worker threads and bounded, and keep-alive.

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
    answered_within(s, wait)
}

/// Waits up to `wait` for the status line of the request already sent on `s`.
fn answered_within(s: &mut TcpStream, wait: Duration) -> bool {
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
    // Closing one frees a slot: the request already sent on the waiting connection is
    // served. (Sending it again would race the server's close after its answer.)
    drop(held);
    assert!(answered_within(&mut third, Duration::from_secs(5)));
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

/// Reads one response (headers and a Content-Length body) from `s`; returns its status.
fn read_response(s: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[test]
fn several_requests_are_served_on_one_connection() {
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        ..Default::default()
    });
    let mut s = TcpStream::connect(&kbs.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..3 {
        // Handled on the blocking pool, like /auth, /attest and /key.
        write!(
            s,
            "GET /kbs/v0/admin/stats HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n",
            kbs.addr
        )
        .unwrap();
        assert_eq!(read_response(&mut s), 200);
    }
    write!(
        s,
        "GET /kbs/v0/nothing HTTP/1.1\r\nHost: {}\r\n\r\n",
        kbs.addr
    )
    .unwrap();
    assert_eq!(read_response(&mut s), 404);
}

#[test]
fn handlers_beyond_the_blocking_pool_wait_their_turn() {
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        extra_args: vec!["--blocking-threads".into(), "1".into()],
        ..Default::default()
    });
    // Another writer holds the database: a registration takes the pool's one slot and waits.
    let holder = rusqlite::Connection::open(kbs.db()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let addr = kbs.addr.clone();
    let writer = std::thread::spawn(move || {
        let body = mkcw_body("slow", &hex::encode([7u8; 48]), "pw", 15);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /kbs/v0/register_workload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_response(&mut s)
    });
    std::thread::sleep(Duration::from_millis(500));
    let stats = format!(
        "GET /kbs/v0/admin/stats HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n",
        kbs.addr
    );
    let mut s = TcpStream::connect(&kbs.addr).unwrap();
    s.write_all(stats.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 12];
    let early = s.read_exact(&mut buf);
    assert!(
        early.is_err(),
        "a second handler ran while the only slot was taken"
    );
    // Requests that need no handler are still answered.
    let mut other = TcpStream::connect(&kbs.addr).unwrap();
    assert!(index_answered_within(
        &mut other,
        &kbs.addr,
        Duration::from_secs(3)
    ));
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(writer.join().unwrap(), 200);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");
}
