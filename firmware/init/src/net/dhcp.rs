//! A DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK, as passt serves it.
//!
//! Every reply is untrusted: [`parse`] checks the fixed header, the magic cookie and every
//! option length against the buffer; replies that do not match the transaction (xid, our
//! hardware address, the server chosen from the OFFER) are ignored. Timeouts and retries are
//! bounded. Only the address, subnet mask, router and DNS servers are used; the lease time
//! is ignored (the VM lives shorter than passt's lease, and passt serves one address).

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::{usable_host_address, MAX_NAMESERVERS};

const OP_BOOTREQUEST: u8 = 1;
const OP_BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
/// Ask for broadcast replies: eth0 has no address to receive unicast ones yet.
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// op .. file, before the magic cookie.
const FIXED_LEN: usize = 236;
const OPTIONS_START: usize = FIXED_LEN + MAGIC_COOKIE.len();

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETER_LIST: u8 = 55;
const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 1
    Discover,
    /// 2
    Offer,
    /// 3
    Request,
    /// 5
    Ack,
    /// 6
    Nak,
    /// Any other value.
    Other(u8),
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Other(c) => c,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            c => MessageType::Other(c),
        }
    }
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the fixed header and the magic cookie.
    #[error("message too short")]
    Short,
    /// Not a BOOTREPLY for an Ethernet address.
    #[error("not a BOOTREPLY for an Ethernet address")]
    Header,
    /// The magic cookie is wrong.
    #[error("bad magic cookie")]
    Cookie,
    /// An option runs past the end of the message.
    #[error("option {0} runs past the end of the message")]
    Truncated(u8),
    /// An option has a length its type does not allow.
    #[error("option {0} has a bad length")]
    OptionLength(u8),
    /// No message type option.
    #[error("no message type")]
    NoMessageType,
}

/// A parsed server reply. Options that occur more than once count the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Transaction id.
    pub xid: u32,
    /// The client hardware address the reply is for.
    pub chaddr: [u8; 6],
    /// "your" address.
    pub yiaddr: Ipv4Addr,
    /// Option 53.
    pub message_type: MessageType,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 1 as a prefix length (only contiguous masks /1../32 are accepted).
    pub prefix_len: Option<u8>,
    /// First address of option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
}

/// What the client configures from an ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The interface address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// At most [`MAX_NAMESERVERS`] usable nameservers.
    pub dns: Vec<Ipv4Addr>,
}

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Sending or receiving failed.
    #[error("DHCP socket error")]
    Io(#[source] io::Error),
    /// Every attempt timed out or was refused.
    #[error("no DHCP lease after {attempts} attempts ({last})")]
    NoLease {
        /// How many DISCOVERs were sent.
        attempts: u32,
        /// What happened on the last attempt.
        last: &'static str,
    },
}

fn header(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut m = vec![0u8; OPTIONS_START];
    m[0] = OP_BOOTREQUEST;
    m[1] = HTYPE_ETHERNET;
    m[2] = HLEN_ETHERNET;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    m[28..34].copy_from_slice(&mac);
    m[FIXED_LEN..OPTIONS_START].copy_from_slice(&MAGIC_COOKIE);
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    m.extend_from_slice(&[
        OPT_PARAMETER_LIST,
        3,
        OPT_SUBNET_MASK,
        OPT_ROUTER,
        OPT_DNS,
        OPT_END,
    ]);
    // BOOTP relays and some servers expect at least the 300-byte BOOTP size.
    if m.len() < 300 {
        m.resize(300, OPT_PAD);
    }
    m
}

/// A DHCPDISCOVER.
pub fn discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut m = header(xid, mac);
    m.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, MessageType::Discover.code()]);
    finish(m)
}

/// A DHCPREQUEST for `address` from the server that offered it (SELECTING state).
pub fn request(xid: u32, mac: [u8; 6], address: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut m = header(xid, mac);
    m.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, MessageType::Request.code()]);
    m.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
    m.extend_from_slice(&address.octets());
    m.extend_from_slice(&[OPT_SERVER_ID, 4]);
    m.extend_from_slice(&server.octets());
    finish(m)
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn one_address(code: u8, data: &[u8]) -> Result<Ipv4Addr, ParseError> {
    if data.len() != 4 {
        return Err(ParseError::OptionLength(code));
    }
    Ok(ipv4_at(data, 0))
}

fn address_list(code: u8, data: &[u8]) -> Result<Vec<Ipv4Addr>, ParseError> {
    if data.is_empty() || data.len() % 4 != 0 {
        return Err(ParseError::OptionLength(code));
    }
    Ok(data.chunks_exact(4).map(|c| ipv4_at(c, 0)).collect())
}

/// The prefix length of a contiguous netmask, /1 to /32.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if ones == 0 || bits.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

/// Parses a server's message (the UDP payload).
pub fn parse(msg: &[u8]) -> Result<Reply, ParseError> {
    if msg.len() < OPTIONS_START {
        return Err(ParseError::Short);
    }
    if msg[0] != OP_BOOTREPLY || msg[1] != HTYPE_ETHERNET || msg[2] != HLEN_ETHERNET {
        return Err(ParseError::Header);
    }
    if msg[FIXED_LEN..OPTIONS_START] != MAGIC_COOKIE {
        return Err(ParseError::Cookie);
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&msg[28..34]);
    let mut reply = Reply {
        xid: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
        chaddr,
        yiaddr: ipv4_at(msg, 16),
        message_type: MessageType::Other(0),
        server_id: None,
        prefix_len: None,
        router: None,
        dns: Vec::new(),
    };
    let mut message_type = None;
    let mut seen = [false; 256];
    let opts = &msg[OPTIONS_START..];
    let mut i = 0;
    while i < opts.len() {
        let code = opts[i];
        match code {
            OPT_PAD => {
                i += 1;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let len = usize::from(*opts.get(i + 1).ok_or(ParseError::Truncated(code))?);
        let data = opts
            .get(i + 2..i + 2 + len)
            .ok_or(ParseError::Truncated(code))?;
        i += 2 + len;
        if std::mem::replace(&mut seen[usize::from(code)], true) {
            continue;
        }
        match code {
            OPT_MESSAGE_TYPE => {
                let [t] = data else {
                    return Err(ParseError::OptionLength(code));
                };
                message_type = Some(MessageType::from_code(*t));
            }
            OPT_SERVER_ID => reply.server_id = Some(one_address(code, data)?),
            OPT_SUBNET_MASK => {
                let mask = one_address(code, data)?;
                reply.prefix_len =
                    Some(mask_to_prefix(mask).ok_or(ParseError::OptionLength(code))?);
            }
            OPT_ROUTER => reply.router = address_list(code, data)?.first().copied(),
            OPT_DNS => reply.dns = address_list(code, data)?,
            _ => {}
        }
    }
    reply.message_type = message_type.ok_or(ParseError::NoMessageType)?;
    Ok(reply)
}

impl Reply {
    /// The lease an ACK grants, if its values are usable.
    pub fn lease(&self) -> Result<Lease, &'static str> {
        if !usable_host_address(self.yiaddr) {
            return Err("the ACK's address is not a unicast address");
        }
        let prefix_len = self.prefix_len.ok_or("the ACK has no subnet mask")?;
        if let Some(r) = self.router {
            if !usable_host_address(r) || r == self.yiaddr {
                return Err("the ACK's router is not a usable address");
            }
        }
        let dns = self
            .dns
            .iter()
            .copied()
            .filter(|d| !d.is_unspecified() && !d.is_broadcast() && !d.is_multicast())
            .take(MAX_NAMESERVERS)
            .collect();
        Ok(Lease {
            address: self.yiaddr,
            prefix_len,
            router: self.router,
            dns,
        })
    }
}

/// Sends and receives DHCP messages (UDP payloads, client port 68 ↔ server port 67).
pub trait Transport {
    /// Broadcasts one client message.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Waits at most `timeout` for one server message; `Ok(None)` on timeout.
    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>>;
}

/// How long each attempt waits for an OFFER and then for an ACK. Generous: a nested,
/// emulated test VM answers slowly; passt itself answers at once.
pub const ATTEMPT_TIMEOUTS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(8),
];

/// Waits until `deadline` for a reply to transaction `xid` for `mac` that `accept` takes.
fn wait_for<T: Transport>(
    t: &mut T,
    deadline: Instant,
    xid: u32,
    mac: [u8; 6],
    mut accept: impl FnMut(&Reply) -> bool,
) -> Result<Option<Reply>, DhcpError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let Some(msg) = t.recv(left).map_err(DhcpError::Io)? else {
            return Ok(None);
        };
        // Replies that do not parse or belong to another transaction are not for us.
        if let Ok(reply) = parse(&msg) {
            if reply.xid == xid && reply.chaddr == mac && accept(&reply) {
                return Ok(Some(reply));
            }
        }
    }
}

/// Runs DISCOVER/OFFER/REQUEST/ACK, at most [`ATTEMPT_TIMEOUTS`]`.len()` times, each with
/// a fresh transaction id from `next_xid`.
pub fn obtain_lease<T: Transport>(
    t: &mut T,
    mac: [u8; 6],
    timeouts: &[Duration],
    mut next_xid: impl FnMut() -> u32,
) -> Result<Lease, DhcpError> {
    let mut last = "no attempt";
    for timeout in timeouts {
        let xid = next_xid();
        t.send(&discover(xid, mac)).map_err(DhcpError::Io)?;
        let offer = wait_for(t, Instant::now() + *timeout, xid, mac, |r| {
            r.message_type == MessageType::Offer
                && r.server_id.is_some()
                && usable_host_address(r.yiaddr)
        })?;
        let Some(offer) = offer else {
            last = "no OFFER";
            continue;
        };
        let Some(server) = offer.server_id else {
            continue;
        };
        t.send(&request(xid, mac, offer.yiaddr, server))
            .map_err(DhcpError::Io)?;
        let answer = wait_for(t, Instant::now() + *timeout, xid, mac, |r| {
            matches!(r.message_type, MessageType::Ack | MessageType::Nak)
                && r.server_id == Some(server)
        })?;
        match answer {
            None => last = "no ACK",
            Some(r) if r.message_type == MessageType::Nak => last = "NAK",
            Some(r) => match r.lease() {
                Ok(lease) if lease.address == offer.yiaddr => return Ok(lease),
                Ok(_) => last = "the ACK's address differs from the OFFER's",
                Err(why) => last = why,
            },
        }
    }
    Err(DhcpError::NoLease {
        attempts: u32::try_from(timeouts.len()).unwrap_or(u32::MAX),
        last,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// A server reply like passt's: BOOTREPLY with the given options.
    fn reply(xid: u32, mac: [u8; 6], yiaddr: Ipv4Addr, options: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_START];
        m[0] = OP_BOOTREPLY;
        m[1] = HTYPE_ETHERNET;
        m[2] = HLEN_ETHERNET;
        m[4..8].copy_from_slice(&xid.to_be_bytes());
        m[16..20].copy_from_slice(&yiaddr.octets());
        m[28..34].copy_from_slice(&mac);
        m[FIXED_LEN..OPTIONS_START].copy_from_slice(&MAGIC_COOKIE);
        for o in options {
            m.extend_from_slice(o);
        }
        m.push(OPT_END);
        m
    }

    fn standard(xid: u32, kind: u8) -> Vec<u8> {
        reply(
            xid,
            MAC,
            ADDR,
            &[
                &[OPT_MESSAGE_TYPE, 1, kind],
                &[OPT_SERVER_ID, 4, 10, 0, 2, 2],
                &[OPT_SUBNET_MASK, 4, 255, 255, 255, 0],
                &[OPT_ROUTER, 8, 10, 0, 2, 2, 10, 0, 2, 3],
                &[OPT_DNS, 16, 10, 0, 2, 3, 0, 0, 0, 0, 8, 8, 8, 8, 1, 1, 1, 1],
                &[51, 4, 0xff, 0xff, 0xff, 0xff],
            ],
        )
    }

    #[test]
    fn client_messages_are_well_formed() {
        let d = discover(0x1234_5678, MAC);
        assert_eq!(d.len(), 300);
        assert_eq!(&d[..4], &[OP_BOOTREQUEST, HTYPE_ETHERNET, HLEN_ETHERNET, 0]);
        assert_eq!(&d[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&d[10..12], &[0x80, 0]);
        assert_eq!(&d[28..34], &MAC);
        assert!(d[34..FIXED_LEN].iter().all(|b| *b == 0));
        assert_eq!(&d[FIXED_LEN..OPTIONS_START], &MAGIC_COOKIE);
        assert_eq!(&d[OPTIONS_START..OPTIONS_START + 3], &[53, 1, 1]);
        assert_eq!(
            &d[OPTIONS_START + 3..OPTIONS_START + 9],
            &[55, 3, 1, 3, 6, 255]
        );

        let r = request(7, MAC, ADDR, SERVER);
        assert_eq!(
            &r[OPTIONS_START..OPTIONS_START + 15],
            &[53, 1, 3, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]
        );
        assert_eq!(&r[4..8], &7u32.to_be_bytes());
    }

    #[test]
    fn replies_parse() {
        let r = parse(&standard(9, 5)).unwrap();
        assert_eq!(r.xid, 9);
        assert_eq!(r.chaddr, MAC);
        assert_eq!(r.message_type, MessageType::Ack);
        assert_eq!(r.server_id, Some(SERVER));
        assert_eq!(r.prefix_len, Some(24));
        assert_eq!(r.router, Some(SERVER));
        assert_eq!(r.dns.len(), 4);
        let lease = r.lease().unwrap();
        assert_eq!(lease.address, ADDR);
        assert_eq!(lease.prefix_len, 24);
        // 0.0.0.0 is dropped, at most three are kept.
        assert_eq!(
            lease.dns,
            vec![
                Ipv4Addr::new(10, 0, 2, 3),
                Ipv4Addr::new(8, 8, 8, 8),
                Ipv4Addr::new(1, 1, 1, 1)
            ]
        );
        // Padding, no END, a repeated option (the first counts).
        let mut m = reply(
            1,
            MAC,
            ADDR,
            &[&[0, 0, OPT_MESSAGE_TYPE, 1, 2], &[OPT_MESSAGE_TYPE, 1, 5]],
        );
        m.pop();
        assert_eq!(parse(&m).unwrap().message_type, MessageType::Offer);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(128, 0, 0, 0)), Some(1));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), None);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 255, 255, 255)), None);
    }

    #[test]
    fn hostile_replies_are_refused() {
        let good = standard(1, 2);
        assert_eq!(parse(&good[..OPTIONS_START - 1]), Err(ParseError::Short));
        assert_eq!(parse(&[]), Err(ParseError::Short));
        for (at, value, err) in [
            (0, OP_BOOTREQUEST, ParseError::Header),
            (1, 6, ParseError::Header),
            (2, 16, ParseError::Header),
            (FIXED_LEN, 0, ParseError::Cookie),
        ] {
            let mut m = good.clone();
            m[at] = value;
            assert_eq!(parse(&m), Err(err), "byte {at}");
        }
        let hostile: [(&[u8], ParseError); 10] = [
            (&[OPT_MESSAGE_TYPE], ParseError::Truncated(53)),
            (&[OPT_MESSAGE_TYPE, 2, 5], ParseError::Truncated(53)),
            (&[OPT_MESSAGE_TYPE, 255, 5], ParseError::Truncated(53)),
            (&[OPT_MESSAGE_TYPE, 0], ParseError::OptionLength(53)),
            (&[OPT_MESSAGE_TYPE, 2, 5, 5], ParseError::OptionLength(53)),
            (&[OPT_SERVER_ID, 3, 1, 2, 3], ParseError::OptionLength(54)),
            (
                &[OPT_SUBNET_MASK, 4, 255, 0, 255, 0],
                ParseError::OptionLength(1),
            ),
            (&[OPT_ROUTER, 5, 1, 2, 3, 4, 5], ParseError::OptionLength(3)),
            (&[OPT_DNS, 0], ParseError::OptionLength(6)),
            (&[12, 3, b'a', b'b', b'c'], ParseError::NoMessageType),
        ];
        for (opts, err) in hostile {
            let mut m = reply(1, MAC, ADDR, &[]);
            m.pop();
            m.extend_from_slice(opts);
            assert_eq!(parse(&m), Err(err), "{opts:?}");
        }
        // Unusable leases.
        let no_mask = reply(1, MAC, ADDR, &[&[OPT_MESSAGE_TYPE, 1, 5]]);
        assert!(parse(&no_mask).unwrap().lease().is_err());
        for yiaddr in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::LOCALHOST,
        ] {
            let m = reply(1, MAC, yiaddr, &[&[53, 1, 5], &[1, 4, 255, 255, 255, 0]]);
            assert!(parse(&m).unwrap().lease().is_err(), "{yiaddr}");
        }
        let self_router = reply(
            1,
            MAC,
            ADDR,
            &[&[53, 1, 5], &[1, 4, 255, 0, 0, 0], &[3, 4, 10, 0, 2, 15]],
        );
        assert!(parse(&self_router).unwrap().lease().is_err());
        // Every truncation of a good reply parses or fails cleanly.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }

    /// A scripted server: answers each client message with the next canned replies.
    struct FakeServer {
        sent: Vec<Vec<u8>>,
        script: VecDeque<Vec<Vec<u8>>>,
        pending: VecDeque<Vec<u8>>,
    }

    impl Transport for FakeServer {
        fn send(&mut self, msg: &[u8]) -> io::Result<()> {
            self.sent.push(msg.to_vec());
            self.pending
                .extend(self.script.pop_front().unwrap_or_default());
            Ok(())
        }
        fn recv(&mut self, _timeout: Duration) -> io::Result<Option<Vec<u8>>> {
            Ok(self.pending.pop_front())
        }
    }

    fn run(script: Vec<Vec<Vec<u8>>>) -> (Result<Lease, DhcpError>, Vec<Vec<u8>>) {
        let mut server = FakeServer {
            sent: Vec::new(),
            script: script.into(),
            pending: VecDeque::new(),
        };
        let mut xids = 100..;
        let timeouts = [Duration::from_millis(50); 3];
        let result = obtain_lease(&mut server, MAC, &timeouts, || xids.next().unwrap());
        (result, server.sent)
    }

    #[test]
    fn exchange_succeeds_ignoring_foreign_replies() {
        let other_mac = {
            let mut m = standard(100, 2);
            m[33] ^= 1;
            m
        };
        let (lease, sent) = run(vec![
            vec![
                standard(99, 2),
                other_mac,
                b"garbage".to_vec(),
                standard(100, 5),
                standard(100, 2),
            ],
            vec![standard(99, 5), standard(100, 2), standard(100, 5)],
        ]);
        let lease = lease.unwrap();
        assert_eq!(lease.address, ADDR);
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(sent.len(), 2);
        assert_eq!(parse_type(&sent[0]), 1);
        assert_eq!(parse_type(&sent[1]), 3);
    }

    fn parse_type(client_msg: &[u8]) -> u8 {
        assert_eq!(&client_msg[OPTIONS_START..OPTIONS_START + 2], &[53, 1]);
        client_msg[OPTIONS_START + 2]
    }

    #[test]
    fn retries_are_bounded() {
        // Silence: three DISCOVERs, then an error.
        let (lease, sent) = run(vec![]);
        assert!(matches!(
            lease,
            Err(DhcpError::NoLease {
                attempts: 3,
                last: "no OFFER"
            })
        ));
        assert_eq!(sent.len(), 3);
        // A NAK restarts with a new xid; the second attempt succeeds.
        let (lease, sent) = run(vec![
            vec![standard(100, 2)],
            vec![standard(100, 6)],
            vec![standard(101, 2)],
            vec![standard(101, 5)],
        ]);
        assert!(lease.is_ok());
        assert_eq!(sent.len(), 4);
        assert_eq!(&sent[2][4..8], &101u32.to_be_bytes());
        // An ACK from another server than the one chosen is ignored.
        let mut other_server = standard(100, 5);
        let at = other_server
            .windows(2)
            .position(|w| w == [OPT_SERVER_ID, 4])
            .unwrap();
        other_server[at + 5] = 9;
        let (lease, _) = run(vec![vec![standard(100, 2)], vec![other_server]]);
        assert!(matches!(
            lease,
            Err(DhcpError::NoLease {
                last: "no OFFER",
                ..
            })
        ));
    }
}
