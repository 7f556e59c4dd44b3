//! A minimal HTTP/1.1 client over any `Read + Write` stream: one request per connection
//! (`Connection: close`), `Content-Length` or chunked bodies, bounded header and body sizes.
//! Timeouts are the stream's (socket read/write timeouts).

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use zeroize::Zeroizing;

/// Largest status line plus headers accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default body limit.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Errors of one HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("stream I/O failed")]
    Io(#[from] io::Error),
    #[error("connection closed before the response was complete")]
    Truncated,
    #[error("response headers are too large")]
    HeadersTooLarge,
    #[error("response body is too large")]
    BodyTooLarge,
    #[error("response is not valid HTTP/1.1")]
    Malformed,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// All values of header `name` (lowercase).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Value of cookie `name` set by this response.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_values("set-cookie").find_map(|v| {
            let first = v.split(';').next()?.trim();
            let (k, val) = first.split_once('=')?;
            (k.trim() == name).then(|| val.trim().to_string())
        })
    }

    /// The body as text for error messages (lossy, shortened).
    pub fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        // Prefer the `detail` of an ErrorInformation body.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(d) = v.get("detail").and_then(|d| d.as_str()) {
                return d.chars().take(200).collect();
            }
        }
        text.trim().chars().take(200).collect()
    }
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `Host` header value.
    pub host: &'a str,
    /// Absolute path.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
}

/// Buffered reader that never reads past what it is asked to consume plus one buffer.
struct Reader<'s, S: Read> {
    stream: &'s mut S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Read> Reader<'_, S> {
    fn fill(&mut self) -> Result<bool, HttpError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads one CRLF-terminated line (without the CRLF), at most `limit` bytes.
    fn line(&mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&self.buf[self.pos..self.pos + i]);
                self.pos += i + 1;
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(out);
            }
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
            if out.len() > limit {
                return Err(HttpError::HeadersTooLarge);
            }
            if !self.fill()? {
                return Err(HttpError::Truncated);
            }
        }
    }

    fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), HttpError> {
        let mut left = n;
        while left > 0 {
            if self.pos == self.buf.len() && !self.fill()? {
                return Err(HttpError::Truncated);
            }
            let take = left.min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            left -= take;
        }
        Ok(())
    }

    fn until_eof(&mut self, limit: usize, out: &mut Vec<u8>) -> Result<(), HttpError> {
        loop {
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
            if out.len() > limit {
                return Err(HttpError::BodyTooLarge);
            }
            if !self.fill()? {
                return Ok(());
            }
        }
    }
}

fn write_request<S: Write>(stream: &mut S, req: &HttpRequest<'_>) -> Result<(), HttpError> {
    // Headers may carry a bearer token and bodies a passphrase (registration): every copy is
    // wiped, and the message is sized up front so that growing it leaves no stale copy.
    let body = req.body.unwrap_or_default();
    let header_len: usize = req.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut head = Zeroizing::new(String::with_capacity(
        req.method.len() + req.path.len() + req.host.len() + header_len + 96,
    ));
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        req.method, req.path, req.host
    );
    for (k, v) in req.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if req.body.is_some() || req.method == "POST" {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut msg = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
    msg.extend_from_slice(head.as_bytes());
    msg.extend_from_slice(body);
    stream.write_all(&msg)?;
    stream.flush()?;
    Ok(())
}

/// Sends `req` and reads the whole response, refusing bodies over `max_body` bytes.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    req: &HttpRequest<'_>,
    max_body: usize,
) -> Result<HttpResponse, HttpError> {
    write_request(stream, req)?;
    let mut r = Reader {
        stream,
        buf: Vec::new(),
        pos: 0,
    };
    let mut header_bytes = 0usize;
    let mut status_line = r.line(MAX_HEADER_BYTES)?;
    // Skip interim 1xx responses.
    let (status, headers) = loop {
        header_bytes += status_line.len();
        let text = std::str::from_utf8(&status_line).map_err(|_| HttpError::Malformed)?;
        let mut parts = text.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed);
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..600).contains(s))
            .ok_or(HttpError::Malformed)?;
        let mut headers = Vec::new();
        loop {
            let line = r.line(MAX_HEADER_BYTES)?;
            header_bytes += line.len() + 2;
            if header_bytes > MAX_HEADER_BYTES {
                return Err(HttpError::HeadersTooLarge);
            }
            if line.is_empty() {
                break;
            }
            let text = std::str::from_utf8(&line).map_err(|_| HttpError::Malformed)?;
            let (k, v) = text.split_once(':').ok_or(HttpError::Malformed)?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            status_line = r.line(MAX_HEADER_BYTES)?;
            continue;
        }
        break (status, headers);
    };
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if req.method == "HEAD" || status == 204 || status == 304 {
        // No body.
    } else if chunked {
        loop {
            let line = r.line(1024)?;
            let text = std::str::from_utf8(&line).map_err(|_| HttpError::Malformed)?;
            let size_text = text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed)?;
            if size == 0 {
                // Trailers until the empty line.
                let mut trailer_bytes = 0usize;
                loop {
                    let t = r.line(MAX_HEADER_BYTES)?;
                    trailer_bytes += t.len();
                    if t.is_empty() {
                        break;
                    }
                    if trailer_bytes > MAX_HEADER_BYTES {
                        return Err(HttpError::HeadersTooLarge);
                    }
                }
                break;
            }
            if body.len().saturating_add(size) > max_body {
                return Err(HttpError::BodyTooLarge);
            }
            r.exact(size, &mut body)?;
            if !r.line(2)?.is_empty() {
                return Err(HttpError::Malformed);
            }
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| HttpError::Malformed)?;
        if len > max_body {
            return Err(HttpError::BodyTooLarge);
        }
        r.exact(len, &mut body)?;
    } else {
        r.until_eof(max_body, &mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that replays canned bytes in small pieces and records what is written.
    struct Canned {
        input: Vec<u8>,
        pos: usize,
        piece: usize,
        written: Vec<u8>,
    }

    impl Canned {
        fn new(input: &[u8], piece: usize) -> Self {
            Canned {
                input: input.to_vec(),
                pos: 0,
                piece,
                written: Vec::new(),
            }
        }
    }

    impl Read for Canned {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Canned {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn post<'a>(body: &'a [u8]) -> HttpRequest<'a> {
        HttpRequest {
            method: "POST",
            host: "kbs:8000",
            path: "/kbs/v0/auth",
            headers: &[
                ("Content-Type", "application/json"),
                ("Cookie", "session_id=abc"),
            ],
            body: Some(body),
        }
    }

    #[test]
    fn request_bytes_and_content_length_response() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: session_id=s1; Path=/\r\n\r\nhelloEXTRA";
        for piece in [1, 3, 4096] {
            let mut s = Canned::new(resp, piece);
            let r = exchange(&mut s, &post(b"{}"), 100).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body, b"hello");
            assert_eq!(r.cookie("session_id").as_deref(), Some("s1"));
            assert_eq!(
                String::from_utf8(s.written).unwrap(),
                "POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs:8000\r\nConnection: close\r\nContent-Type: application/json\r\nCookie: session_id=abc\r\nContent-Length: 2\r\n\r\n{}"
            );
        }
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let resp = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{\"de\r\nf\r\ntail\":\"no\"}    \r\n0\r\nX-T: 1\r\n\r\n";
        let mut s = Canned::new(resp, 2);
        let r = exchange(&mut s, &post(b""), 100).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.body, b"{\"detail\":\"no\"}    ");
        assert_eq!(r.message(), "no");
    }

    #[test]
    fn limits_and_truncation_are_errors() {
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n";
        assert!(matches!(
            exchange(&mut Canned::new(big, 64), &post(b""), 100),
            Err(HttpError::BodyTooLarge)
        ));
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n";
        assert!(matches!(
            exchange(&mut Canned::new(chunks, 64), &post(b""), 16),
            Err(HttpError::BodyTooLarge)
        ));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(matches!(
            exchange(&mut Canned::new(short, 64), &post(b""), 100),
            Err(HttpError::Truncated)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert!(matches!(
            exchange(&mut Canned::new(&huge, 4096), &post(b""), 100),
            Err(HttpError::HeadersTooLarge)
        ));
        let garbage = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(matches!(
            exchange(&mut Canned::new(garbage, 64), &post(b""), 100),
            Err(HttpError::Malformed)
        ));
        let eof_body = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        let r = exchange(&mut Canned::new(eof_body, 3), &post(b""), 100).unwrap();
        assert_eq!(r.body, b"until close");
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            exchange(&mut Canned::new(interim, 5), &post(b""), 100)
                .unwrap()
                .status,
            204
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every prefix of a valid chunked answer, then pseudo-random garbage.
        let valid =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for n in 0..valid.len() {
            let _ = exchange(&mut Canned::new(&valid[..n], 7), &post(b""), 64);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
            for _ in 0..(seed % 200) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input
                    .push(b"\r\n:0123456789abcdefTransfer-Encoding chunked;"[(seed % 45) as usize]);
            }
            let _ = exchange(&mut Canned::new(&input, 5), &post(b""), 64);
        }
    }
}
