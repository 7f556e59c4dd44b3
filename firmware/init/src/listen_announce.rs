//! For a NULL port map: tell the host which TCP ports the workload listens on, as
//! `LISTEN <port>\n` / `UNLISTEN <port>\n` lines on vsock port 1027 (docs/interfaces.md).
//! The listening sockets are read from /proc/net/tcp and /proc/net/tcp6 every half second.
//! When the host has no service on the port (a launch with a fixed port map, or a VMM without
//! it) connecting fails; retries then back off exponentially up to [`RETRY_MAX`], so an idle
//! guest does not spin on it.
//! Only sockets reachable through 127.0.0.1 count (the forwarder connects there): IPv4
//! 0.0.0.0 and 127.0.0.0/8, IPv6 `::` and the v4-mapped forms of those.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::time::Duration;

use crate::vsock::{VsockStream, HOST_CID, LISTEN_ANNOUNCE_PORT};

const POLL: Duration = Duration::from_millis(500);
/// First delay after a failed connect.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between connect attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// TCP_LISTEN in the `st` column.
const TCP_LISTEN: &str = "0A";

/// Listening ports in one /proc/net/tcp{,6} text.
pub fn listening_ports(text: &str) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            reachable_from_loopback(addr).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// `addr` is the kernel's hex dump of the address: 32-bit words in host (little-endian)
/// order, 1 word for IPv4, 4 for IPv6.
fn reachable_from_loopback(addr: &str) -> bool {
    let words: Option<Vec<[u8; 4]>> = (0..addr.len() / 8)
        .map(|i| {
            addr.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_le_bytes)
        })
        .collect();
    let v4_ok = |o: [u8; 4]| o == [0; 4] || o[0] == 127;
    match (addr.len(), words.as_deref()) {
        (8, Some([v4])) => v4_ok(*v4),
        (32, Some([a, b, c, d])) => {
            let prefix_zero = *a == [0; 4] && *b == [0; 4];
            (prefix_zero && *c == [0; 4] && *d == [0; 4])
                || (prefix_zero && *c == [0, 0, 0xff, 0xff] && v4_ok(*d))
        }
        _ => false,
    }
}

/// Tracks what the host has been told.
#[derive(Debug, Default)]
pub struct Announcer {
    announced: BTreeSet<u16>,
}

impl Announcer {
    /// Writes the lines that bring the host from the announced set to `now`.
    pub fn update(&mut self, now: &BTreeSet<u16>, out: &mut dyn Write) -> io::Result<()> {
        let mut text = String::new();
        for p in self.announced.difference(now) {
            text.push_str(&format!("UNLISTEN {p}\n"));
        }
        for p in now.difference(&self.announced) {
            text.push_str(&format!("LISTEN {p}\n"));
        }
        if !text.is_empty() {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        self.announced.clone_from(now);
        Ok(())
    }
}

fn current_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            ports.extend(listening_ports(&text));
        }
    }
    ports
}

/// Delays between failed connect attempts: [`RETRY_MIN`], doubling up to [`RETRY_MAX`], back
/// to the start after a connection succeeds.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: RETRY_MIN }
    }
}

impl Backoff {
    /// The delay to wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(RETRY_MAX);
        delay
    }

    /// A connect succeeded: the next failure waits [`RETRY_MIN`] again.
    pub fn reset(&mut self) {
        self.next = RETRY_MIN;
    }
}

/// Polls forever; reconnects (and re-announces everything) when the stream breaks, backing
/// off while the host does not answer.
pub fn run() {
    let mut conn: Option<(VsockStream, Announcer)> = None;
    let mut backoff = Backoff::default();
    loop {
        if conn.is_none() {
            match VsockStream::connect(HOST_CID, LISTEN_ANNOUNCE_PORT) {
                Ok(stream) => {
                    backoff.reset();
                    conn = Some((stream, Announcer::default()));
                }
                Err(_) => {
                    std::thread::sleep(backoff.failed());
                    continue;
                }
            }
        }
        if let Some((stream, announcer)) = conn.as_mut() {
            if announcer.update(&current_ports(), stream).is_err() {
                conn = None;
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0A00020F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0BBA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0 100 0 0 10 0
";

    #[test]
    fn parses_listening_sockets_reachable_via_loopback() {
        // 127.0.0.1:8080 and 0.0.0.0:80 listen; 10.0.2.15:5000 is not reachable via
        // 127.0.0.1; the established socket is not listening.
        assert_eq!(listening_ports(TCP), BTreeSet::from([80, 8080]));
        // [::]:3000 and [::ffff:127.0.0.1]:3002 count; [::1]:3001 does not.
        assert_eq!(listening_ports(TCP6), BTreeSet::from([3000, 3002]));
        assert!(listening_ports("header only\n garbage line\n").is_empty());
    }

    #[test]
    fn real_proc_net_tcp_shows_a_test_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(current_ports().contains(&port));
        drop(l);
    }

    #[test]
    fn announcements_are_differences() {
        let mut a = Announcer::default();
        let mut out = Vec::new();
        a.update(&BTreeSet::from([80, 443]), &mut out).unwrap();
        a.update(&BTreeSet::from([80, 443]), &mut out).unwrap();
        a.update(&BTreeSet::from([443, 8080]), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "LISTEN 80\nLISTEN 443\nUNLISTEN 80\nLISTEN 8080\n"
        );
    }

    #[test]
    fn connect_retries_back_off_to_a_cap_and_reset() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(500));
        assert_eq!(b.failed(), Duration::from_secs(1));
    }
}
