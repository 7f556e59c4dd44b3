//! Key-broker answers as the guest init's client reads them (`krun_attestation::client::snp`,
//! `http`, `reference`, `rcar`). In a confidential launch the broker connection runs through
//! the host's vsock proxy; over `http://` (or before a pinned TLS session is up) the host
//! writes every byte the client reads.
//!
//! The input is the answers of a scripted broker (one per connection: raw bytes, or an HTTP
//! response with a status, a session cookie, framing by Content-Length, a wrong length,
//! chunks or EOF, and a body that is raw, a challenge, RCAR's version-mismatch error, a hex
//! ciphertext or a JWE with chosen algorithms, key and field lengths), the protocol, and the
//! report the guest's PSP would return.
//!
//! What runs: `http::exchange` on each answer alone, then the whole SNP flow
//! (`snp::attest`) against the scripted broker. The reference flow generates an RSA-2048 key
//! once `/auth` succeeds (about a second), so when the first answer is a valid reference
//! challenge the target runs the reference key step's parsing instead (the `/key` body as a
//! JSON string of hex) without the RSA decryption: that is the `rsa` crate's arithmetic on
//! any number below the modulus (85% of this target's time when it ran), and as PKCS#1 v1.5
//! has no integrity, a random ciphertext unpads with a probability of about 2^-16, so nothing
//! can be asserted of its result.
//!
//! Checked beyond "no panic": a parsed response has a status in 200..600, a body within the
//! limit and lowercase header names; no scripted answer yields a secret (none is sealed to
//! the guest's fresh key, so any `Ok` would be a forged secret accepted); a refusal names a
//! status other than 200; the client opens at most one connection per protocol step (four
//! when the reference client switches to RCAR).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::http::{exchange, HttpRequest};
use krun_attestation::transport::Stream;
use krun_attestation::{rcar, reference, ClientConfig, ClientError, KbsProtocol};

#[derive(Arbitrary, Debug)]
pub enum Status {
    Ok,
    Unauthorized,
    Unavailable,
    Any(u16),
}

#[derive(Arbitrary, Debug)]
pub enum Cookie {
    None,
    Reference(String),
    Rcar(String),
    Other(String),
}

#[derive(Arbitrary, Debug)]
pub enum Framing {
    Length,
    WrongLength(u32),
    /// Chunk sizes (the body is cut into these, the rest in one last chunk).
    Chunked(Vec<u8>),
    UntilEof,
}

#[derive(Arbitrary, Debug)]
pub enum Alg {
    EcdhEsA256kw,
    RsaOaep256,
    Other(String),
}

#[derive(Arbitrary, Debug)]
pub struct Jwe {
    pub alg: Alg,
    pub enc_a256gcm: bool,
    /// curve (P-256 when true), x, y.
    pub epk: Option<(bool, Vec<u8>, Vec<u8>)>,
    pub encrypted_key: Vec<u8>,
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub tag: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub enum Body {
    Raw(Vec<u8>),
    Challenge {
        nonce: String,
        extra: String,
    },
    VersionMismatch,
    ErrorInformation {
        kind: String,
        detail: String,
    },
    /// The reference `/key` answer: a JSON string of hex.
    Hex(Vec<u8>),
    Token(String),
    Jwe(Jwe),
}

// Built once per input: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Arbitrary, Debug)]
pub enum Answer {
    Raw(Vec<u8>),
    Http {
        status: Status,
        cookie: Cookie,
        framing: Framing,
        body: Body,
        headers: Vec<(String, String)>,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub rcar: bool,
    pub answers: Vec<Answer>,
    /// Picks the report's version (2, 3 or 5).
    pub report_version: u32,
    pub report_fails: bool,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn body_bytes(b: &Body) -> Vec<u8> {
    use serde_json::json;
    let v = match b {
        Body::Raw(r) => return r.clone(),
        Body::Challenge { nonce, extra } => json!({"nonce": nonce, "extra-params": extra}),
        Body::VersionMismatch => json!({
            "type": format!("{}ProtocolVersion", rcar::ERROR_TYPE_PREFIX),
            "detail": rcar::VERSION_MISMATCH,
        }),
        Body::ErrorInformation { kind, detail } => json!({"type": kind, "detail": detail}),
        Body::Hex(h) => json!(hex::encode(h)),
        Body::Token(t) => json!({ "token": t }),
        Body::Jwe(j) => {
            let alg = match &j.alg {
                Alg::EcdhEsA256kw => "ECDH-ES+A256KW",
                Alg::RsaOaep256 => "RSA-OAEP-256",
                Alg::Other(s) => s.as_str(),
            };
            let mut header = json!({
                "alg": alg,
                "enc": if j.enc_a256gcm { "A256GCM" } else { "A128GCM" },
            });
            if let Some((p256, x, y)) = &j.epk {
                header["epk"] = json!({
                    "kty": "EC",
                    "crv": if *p256 { "P-256" } else { "P-384" },
                    "x": b64(x),
                    "y": b64(y),
                });
            }
            json!({
                "protected": b64(header.to_string().as_bytes()),
                "encrypted_key": b64(&j.encrypted_key),
                "iv": b64(&j.iv),
                "ciphertext": b64(&j.ciphertext),
                "tag": b64(&j.tag),
            })
        }
    };
    v.to_string().into_bytes()
}

fn answer_bytes(a: &Answer) -> Vec<u8> {
    let Answer::Http {
        status,
        cookie,
        framing,
        body,
        headers,
    } = a
    else {
        let Answer::Raw(r) = a else { unreachable!() };
        return r.clone();
    };
    let code = match status {
        Status::Ok => 200,
        Status::Unauthorized => 401,
        Status::Unavailable => 503,
        Status::Any(c) => *c,
    };
    let body = body_bytes(body);
    let mut out = format!("HTTP/1.1 {code} Whatever\r\n");
    match cookie {
        Cookie::None => {}
        Cookie::Reference(v) => out += &format!("Set-Cookie: session_id={v}; Path=/\r\n"),
        Cookie::Rcar(v) => out += &format!("Set-Cookie: kbs-session-id={v}\r\n"),
        Cookie::Other(v) => out += &format!("Set-Cookie: {v}\r\n"),
    }
    for (k, v) in headers.iter().take(4) {
        out += &format!("{k}: {v}\r\n");
    }
    let mut out = out.into_bytes();
    match framing {
        Framing::Length => {
            out.extend(format!("Content-Length: {}\r\n\r\n", body.len()).bytes());
            out.extend(&body);
        }
        Framing::WrongLength(l) => {
            out.extend(format!("Content-Length: {l}\r\n\r\n").bytes());
            out.extend(&body);
        }
        Framing::UntilEof => {
            out.extend(b"\r\n");
            out.extend(&body);
        }
        Framing::Chunked(sizes) => {
            out.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body.as_slice();
            for &s in sizes.iter().take(16) {
                let (chunk, r) = rest.split_at(usize::from(s).min(rest.len()));
                if chunk.is_empty() {
                    break;
                }
                out.extend(format!("{:x};ext=1\r\n", chunk.len()).bytes());
                out.extend(chunk);
                out.extend(b"\r\n");
                rest = r;
            }
            if !rest.is_empty() {
                out.extend(format!("{:x}\r\n", rest.len()).bytes());
                out.extend(rest);
                out.extend(b"\r\n");
            }
            out.extend(b"0\r\nTrailer: x\r\n\r\n");
        }
    }
    out
}

/// One scripted connection: reads come from the answer, writes are discarded.
struct Scripted(io::Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const MAX_BODY: usize = 4096;

fn check_exchange(bytes: &[u8]) {
    let req = HttpRequest {
        method: "GET",
        host: "kbs",
        path: "/kbs/v0/auth",
        headers: &[("Accept", "application/json")],
        body: None,
    };
    let mut s = Scripted(io::Cursor::new(bytes.to_vec()));
    if let Ok(r) = exchange(&mut s, &req, MAX_BODY) {
        assert!((200..600).contains(&r.status), "status {}", r.status);
        assert!(r.body.len() <= MAX_BODY, "body of {} bytes", r.body.len());
        for (k, _) in &r.headers {
            assert_eq!(k, &k.to_ascii_lowercase());
        }
        for name in [reference::SESSION_COOKIE, rcar::SESSION_COOKIE] {
            if let Some(c) = r.cookie(name) {
                assert!(!c.contains(';') && c.trim() == c);
            }
        }
        let _ = r.message();
    }
}

/// Whether the first answer is a reference `/auth` success (the client would then make an
/// RSA key).
fn reference_auth_succeeds(first: &[u8]) -> bool {
    let req = HttpRequest {
        method: "POST",
        host: "kbs",
        path: "/kbs/v0/auth",
        headers: &[],
        body: Some(b"{}"),
    };
    let mut s = Scripted(io::Cursor::new(first.to_vec()));
    exchange(&mut s, &req, krun_attestation::http::DEFAULT_MAX_BODY).is_ok_and(|r| {
        r.status == 200
            && r.cookie(reference::SESSION_COOKIE).is_some()
            && serde_json::from_slice::<reference::Challenge>(&r.body).is_ok()
    })
}

pub fn run(input: &Input) {
    let answers: Vec<Vec<u8>> = input.answers.iter().take(6).map(answer_bytes).collect();
    for a in &answers {
        check_exchange(a);
    }

    let protocol = if input.rcar {
        KbsProtocol::Rcar
    } else {
        KbsProtocol::Reference
    };
    if protocol == KbsProtocol::Reference
        && answers.first().is_some_and(|a| reference_auth_succeeds(a))
    {
        // The reference `/key` step's parsing, as the client does it, on the third answer's
        // body (the module comment says why the decryption is left out).
        let Some(Answer::Http { body, .. }) = input.answers.get(2) else {
            return;
        };
        let body = body_bytes(body);
        if let Ok(text) = serde_json::from_slice::<String>(&body) {
            let _ = hex::decode(text.trim());
        }
        return;
    }

    let queue = Arc::new(Mutex::new(answers.into_iter().collect::<VecDeque<_>>()));
    let connects = Arc::new(Mutex::new(0usize));
    let (q, c) = (queue.clone(), connects.clone());
    let connector = move || -> io::Result<Box<dyn Stream>> {
        *c.lock().expect("lock") += 1;
        match q.lock().expect("lock").pop_front() {
            Some(a) => Ok(Box::new(Scripted(io::Cursor::new(a)))),
            None => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
        }
    };
    let mut cfg = ClientConfig::new("http://kbs.example:8080", Arc::new(connector), None)
        .expect("client config");
    cfg.retries = 0;
    cfg.retry_delay = Duration::ZERO;
    cfg.max_body = MAX_BODY;
    let req = SnpRequest {
        workload_id: "w",
        protocol,
        generation: "milan",
        resource_path: None,
        host_json: Some(b"{}"),
    };
    let mut get_report =
        |data: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
            if input.report_fails {
                return Err("no report".into());
            }
            // The report comes from the PSP, not the host: a well-formed one (version 2, 3
            // or 5, a Milan CPUID, a chip ID) with the REPORT_DATA asked for.
            let mut r = vec![0u8; 0x4a0];
            let version = [2u32, 3, 5][usize::try_from(input.report_version % 3).unwrap_or(0)];
            r[..4].copy_from_slice(&version.to_le_bytes());
            r[0x50..0x90].copy_from_slice(&data);
            r[0x188] = 0x19;
            r[0x189] = 0x01;
            r[0x1a0..0x1a8].fill(0x5a);
            Ok(r)
        };
    let result = snp::attest(&cfg, &req, &mut get_report);
    let n = *connects.lock().expect("lock");
    assert!(n <= 4, "{n} connections");
    match result {
        Ok(_) => panic!("a secret not sealed to the guest's key was accepted"),
        Err(ClientError::Status { status, .. }) => assert_ne!(status, 200),
        Err(_) => {}
    }
}
