//! Guest side of port forwarding (docs/interfaces.md, vsock port 1024): the host connects,
//! sends `CONNECT <tcp-port>\n`; the init connects to `127.0.0.1:<tcp-port>` and answers
//! `OK\n`, or `ERR <reason>\n` and closes; then bytes are copied both ways until each side
//! has finished sending.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::time::Duration;

use crate::vsock::{VsockListener, VsockStream};

/// The preamble is short; anything longer is refused.
const MAX_PREAMBLE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which guest ports the host may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPolicy {
    /// Any port (NULL port map: whatever the workload listens on).
    Any,
    /// Only these.
    Only(BTreeSet<u16>),
}

impl PortPolicy {
    fn allows(&self, port: u16) -> bool {
        match self {
            PortPolicy::Any => true,
            PortPolicy::Only(set) => set.contains(&port),
        }
    }
}

/// A byte stream that can be split into two directions.
pub trait Duplex: Read + Write + Send + 'static {
    /// A second handle for the other direction.
    fn try_clone_duplex(&self) -> io::Result<Box<dyn Duplex>>;
    /// Signals end of data to the peer.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Duplex for VsockStream {
    fn try_clone_duplex(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Duplex for TcpStream {
    fn try_clone_duplex(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn try_clone_duplex(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Reads `CONNECT <port>\n` one byte at a time, so no payload byte is consumed.
pub fn read_preamble(stream: &mut dyn Read) -> Result<u16, &'static str> {
    let mut line = Vec::with_capacity(MAX_PREAMBLE);
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(0) | Err(_) => return Err("no request"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_PREAMBLE => return Err("request too long"),
            Ok(_) => line.push(b[0]),
        }
    }
    let text = std::str::from_utf8(&line).map_err(|_| "bad request")?;
    let port = text.strip_prefix("CONNECT ").ok_or("bad request")?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|c| c.is_ascii_digit()) => Ok(p),
        _ => Err("bad port"),
    }
}

/// Serves one forwarded connection to its end.
pub fn handle(mut host: Box<dyn Duplex>, policy: &PortPolicy) {
    let port = match read_preamble(&mut host) {
        Ok(p) => p,
        Err(reason) => {
            let _ = host.write_all(format!("ERR {reason}\n").as_bytes());
            return;
        }
    };
    if !policy.allows(port) {
        let _ = host.write_all(b"ERR port not forwarded\n");
        return;
    }
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
    let guest = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let reason = match e.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => e.to_string(),
            };
            let _ = host.write_all(format!("ERR {reason}\n").as_bytes());
            return;
        }
    };
    if host.write_all(b"OK\n").is_err() {
        return;
    }
    splice(host, Box::new(guest));
}

/// Copies both ways; each direction ends with a write shutdown of its destination.
pub fn splice(a: Box<dyn Duplex>, b: Box<dyn Duplex>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone_duplex(), b.try_clone_duplex()) else {
        return;
    };
    let forward = std::thread::spawn(move || copy_then_shutdown(a, b2));
    copy_then_shutdown(b, a2);
    let _ = forward.join();
}

fn copy_then_shutdown(mut from: Box<dyn Duplex>, mut to: Box<dyn Duplex>) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown_write();
}

/// Accepts forwarded connections on vsock port 1024 forever, one thread each.
pub fn serve(listener: VsockListener, policy: PortPolicy) {
    let policy = std::sync::Arc::new(policy);
    loop {
        match listener.accept() {
            Ok(stream) => {
                let policy = policy.clone();
                std::thread::spawn(move || handle(Box::new(stream), &policy));
            }
            Err(e) => {
                crate::log_warn!("port forwarding: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    fn echo_server() -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all.reverse();
            s.write_all(&all).unwrap();
        });
        (port, t)
    }

    fn forward(policy: PortPolicy) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (host, guest_side) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || handle(Box::new(guest_side), &policy));
        (host, t)
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 {
            out.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwards_both_ways_including_half_close() {
        let (port, server) = echo_server();
        let (mut host, t) = forward(PortPolicy::Any);
        // Payload sent right behind the preamble must not be swallowed by it.
        host.write_all(format!("CONNECT {port}\nhello world").as_bytes())
            .unwrap();
        assert_eq!(read_line(&mut host), "OK\n");
        host.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        host.read_to_string(&mut back).unwrap();
        assert_eq!(back, "dlrow olleh");
        server.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn refusals() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        for (request, policy, answer) in [
            (
                format!("CONNECT {closed_port}\n"),
                PortPolicy::Any,
                "ERR connection refused\n",
            ),
            (
                "CONNECT 80\n".to_string(),
                PortPolicy::Only(BTreeSet::from([8080])),
                "ERR port not forwarded\n",
            ),
            ("CONNECT 0\n".to_string(), PortPolicy::Any, "ERR bad port\n"),
            (
                "CONNECT 70000\n".to_string(),
                PortPolicy::Any,
                "ERR bad port\n",
            ),
            (
                "CONNECT +80\n".to_string(),
                PortPolicy::Any,
                "ERR bad port\n",
            ),
            (
                "GET / HTTP/1.1\n".to_string(),
                PortPolicy::Any,
                "ERR bad request\n",
            ),
            (
                format!("CONNECT {}\n", "9".repeat(40)),
                PortPolicy::Any,
                "ERR request too long\n",
            ),
        ] {
            let (mut host, t) = forward(policy);
            // The handler may close before reading all of an over-long request.
            let _ = host.write_all(request.as_bytes());
            // Unread request bytes may turn the close into a reset after the answer.
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = host.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(String::from_utf8(got).unwrap(), answer, "for {request:?}");
            t.join().unwrap();
        }
    }

    #[test]
    fn preamble_parser_handles_arbitrary_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = usize::try_from(seed % 40).unwrap();
            let mut bytes: Vec<u8> = seed
                .to_le_bytes()
                .iter()
                .cycle()
                .take(len)
                .copied()
                .collect();
            if seed % 3 == 0 {
                bytes.splice(0..0, b"CONNECT ".iter().copied());
            }
            if let Ok(port) = read_preamble(&mut bytes.as_slice()) {
                assert_ne!(port, 0);
                assert!(bytes.starts_with(format!("CONNECT {port}\n").as_bytes()));
            }
        }
        assert_eq!(read_preamble(&mut &b"CONNECT 8080\nrest"[..]), Ok(8080));
    }

    #[test]
    fn listed_port_is_allowed() {
        let (port, server) = echo_server();
        let (mut host, t) = forward(PortPolicy::Only(BTreeSet::from([port])));
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        assert_eq!(read_line(&mut host), "OK\n");
        host.write_all(b"ab").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        host.read_to_string(&mut back).unwrap();
        assert_eq!(back, "ba");
        server.join().unwrap();
        t.join().unwrap();
    }
}
