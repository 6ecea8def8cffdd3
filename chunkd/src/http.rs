//! A tiny blocking HTTP/1.1 server for `GET /metrics` and `GET /status`
//! (`http_addr`, docs/design/003-configuration.md), plus a client for tests.
//!
//! It runs on plain std threads, off the io_uring cores, so a slow or
//! hostile scraper can never stall the data path. Everything it holds is
//! bounded: the request head, the time a connection may take, and the
//! number of connections served at once. One request per connection, then
//! `Connection: close`: scrapes are seconds apart and keep-alive would only
//! add state.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) read; more is 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Time a connection gets to send its request head, and separately to take
/// the response. A total per phase, not per read, so a client trickling a
/// byte at a time cannot hold a thread for longer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once, each on its own thread. Beyond that the
/// accept thread answers 503 itself.
pub const MAX_CONNECTIONS: usize = 8;
/// Largest response `get` accepts.
pub const MAX_CLIENT_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How long the accept thread waits for a refused client's request before
/// answering 503. Short: it blocks accepting meanwhile.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// After the response, how long to drain what the client still sends, so
/// closing does not reset the connection before it read the response.
const LINGER_TIMEOUT: Duration = Duration::from_millis(250);
const LINGER_MAX_BYTES: usize = 64 * 1024;
/// Pause after an accept error such as EMFILE, which would otherwise repeat
/// in a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Maps a request path (query string removed) to a response; `None` is 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: CONTENT_TYPE_TEXT,
            body: body.into().into_bytes(),
        }
    }

    pub fn json(value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response {
            status: 200,
            content_type: CONTENT_TYPE_JSON,
            body,
        }
    }

    fn error(status: u16) -> Response {
        Response::text(status, format!("{status} {}\n", reason(status)))
    }
}

/// Why a request was not served. Each maps to the status sent back.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("client closed the connection before sending anything")]
    Closed,
    #[error("request head larger than {MAX_REQUEST_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("request head not complete within {IO_TIMEOUT:?}")]
    Timeout,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version")]
    Version,
    #[error("method not allowed")]
    Method,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status to answer with, or `None` to just close.
    fn status(&self) -> Option<u16> {
        match self {
            RequestError::Closed | RequestError::Io(_) => None,
            RequestError::TooLarge => Some(431),
            RequestError::Timeout => Some(408),
            RequestError::Malformed(_) => Some(400),
            RequestError::Version => Some(505),
            RequestError::Method => Some(405),
        }
    }
}

struct Request {
    head_only: bool,
    path: String,
}

/// The server; dropping it shuts it down like `shutdown`.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` now, so a bind error and the chosen port are known to the
    /// caller, then serves on a thread of its own.
    pub fn start(addr: SocketAddr, handler: Handler) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new().name("chunkd-http".into()).spawn({
            let stop = stop.clone();
            move || accept_loop(listener, handler, stop)
        })?;
        Ok(HttpServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and joins the accept thread, which also closes the
    /// listening socket. Connections already being served finish on their
    /// own threads, within their timeouts.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // The accept thread blocks in accept(); a connection of our own
        // wakes it to see the flag.
        match TcpStream::connect_timeout(&wake_addr(self.local_addr), WAKE_TIMEOUT) {
            Ok(_) => {
                if thread.join().is_err() {
                    tracing::warn!("http accept thread panicked");
                }
            }
            // Joining now could block forever; the thread exits at the
            // next connection it accepts instead.
            Err(e) => tracing::warn!(
                addr = %self.local_addr,
                "cannot wake the http accept thread ({e}); leaving it to exit on its own"
            ),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Where to connect to reach our own listener: a wildcard bind is reached
/// through loopback.
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Decrements the count of connection threads when one ends, even by panic.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: TcpListener, handler: Handler, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) {
                    tracing::warn!("http accept: {e}");
                    thread::sleep(ACCEPT_ERROR_BACKOFF);
                }
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            refuse(stream);
            continue;
        }
        let slot = Slot(active.clone());
        let handler = handler.clone();
        // On a spawn error the closure, with the stream and the slot, is
        // dropped: the client sees a closed connection, the slot is freed.
        if let Err(e) = thread::Builder::new()
            .name("chunkd-http-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &*handler);
            })
        {
            tracing::warn!("http: cannot start a connection thread: {e}");
        }
    }
}

/// Answers 503 on the accept thread when all connection threads are busy.
/// It reads the request first, briefly, because closing a socket with
/// unread input resets it and the client might never see the answer.
fn refuse(mut stream: TcpStream) {
    let deadline = Instant::now() + REFUSE_READ_TIMEOUT;
    let mut head = [0u8; MAX_REQUEST_HEAD_BYTES];
    let _ = read_head(&mut stream, &mut head, deadline);
    let _ = write_response(
        &mut stream,
        &Response::error(503),
        false,
        Instant::now() + REFUSE_READ_TIMEOUT,
    );
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve(mut stream: TcpStream, handler: &(dyn Fn(&str) -> Option<Response> + Send + Sync)) {
    let mut head = [0u8; MAX_REQUEST_HEAD_BYTES];
    let request = read_head(&mut stream, &mut head, Instant::now() + IO_TIMEOUT)
        .and_then(|len| parse_head(&head[..len]));
    let (response, head_only) = match request {
        Ok(request) => {
            let response = match catch_unwind(AssertUnwindSafe(|| handler(&request.path))) {
                Ok(Some(response)) => response,
                Ok(None) => Response::error(404),
                Err(_) => {
                    tracing::error!(path = %request.path, "http handler panicked");
                    Response::error(500)
                }
            };
            (response, request.head_only)
        }
        Err(e) => {
            tracing::debug!("http: {e}");
            match e.status() {
                Some(status) => (Response::error(status), false),
                None => return,
            }
        }
    };
    if let Err(e) = write_response(
        &mut stream,
        &response,
        head_only,
        Instant::now() + IO_TIMEOUT,
    ) {
        tracing::debug!("http: writing the response: {e}");
        return;
    }
    linger(stream);
}

/// Reads until the blank line ending the head; returns the head's length.
/// Bare LF line ends are accepted, as RFC 9112 §2.2 allows.
fn read_head(
    stream: &mut TcpStream,
    buf: &mut [u8; MAX_REQUEST_HEAD_BYTES],
    deadline: Instant,
) -> Result<usize, RequestError> {
    let mut filled = 0;
    loop {
        if let Some(end) = head_end(&buf[..filled]) {
            return Ok(end);
        }
        if filled == buf.len() {
            return Err(RequestError::TooLarge);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RequestError::Timeout);
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(RequestError::Closed),
            Ok(0) => return Err(RequestError::Malformed("connection closed mid-head")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestError::Timeout);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Length of the head including its terminating blank line, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        let rest = &buf[i + 1..];
        if rest.starts_with(b"\r\n") {
            Some(i + 3)
        } else if rest.starts_with(b"\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let request_line = std::str::from_utf8(request_line)
        .map_err(|_| RequestError::Malformed("request line is not UTF-8"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "request line is not `METHOD TARGET VERSION`",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed("bad method"));
    }
    if !version.starts_with("HTTP/") {
        return Err(RequestError::Malformed("bad version"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Version);
    }
    // Headers are not used, but a line without a colon means the client
    // and we disagree on what this is.
    if lines
        .take_while(|l| !l.is_empty())
        .any(|l| !l.contains(&b':'))
    {
        return Err(RequestError::Malformed("header line without a colon"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(RequestError::Method),
    };
    if !target.starts_with('/') {
        return Err(RequestError::Malformed("target is not an absolute path"));
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    Ok(Request {
        head_only,
        path: path.to_owned(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
    deadline: Instant,
) -> io::Result<()> {
    let status = response.status;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        response.content_type,
        response.body.len(),
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if status == 503 {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    write_all_by(stream, &out, deadline)
}

/// `write_all` that gives up at `deadline` rather than after a timeout per
/// write, so a client reading a byte at a time cannot hold the thread.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(remaining))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes, then drains briefly what the client still sends, so the
/// close does not turn into a reset that discards the response in flight.
fn linger(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIMEOUT;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    while drained < LINGER_MAX_BYTES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Blocking `GET path`; returns the status and the body. For tests and
/// tools: the whole exchange must finish within `timeout`, and the response
/// may be at most `MAX_CLIENT_RESPONSE_BYTES`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad request path {path:?}"),
        ));
    }
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    write_all_by(&mut stream, request.as_bytes(), deadline)?;

    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if response.len() + n > MAX_CLIENT_RESPONSE_BYTES {
                    return Err(invalid_data("response too large"));
                }
                response.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&response)
}

fn invalid_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn parse_response(response: &[u8]) -> io::Result<(u16, String)> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid_data("response head not terminated"))?;
    let head = std::str::from_utf8(&response[..end])
        .map_err(|_| invalid_data("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid_data("bad status line"))?;
    let mut body = &response[end + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let len: usize = value
                .trim()
                .parse()
                .map_err(|_| invalid_data("bad Content-Length"))?;
            body = body
                .get(..len)
                .ok_or_else(|| invalid_data("response body shorter than Content-Length"))?;
        }
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| invalid_data("body is not UTF-8"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_crlf_and_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
        assert_eq!(head_end(b"\n"), None);
    }

    #[test]
    fn parse_head_cases() {
        let ok = |h: &[u8]| parse_head(h).map(|r| (r.head_only, r.path));
        assert_eq!(
            ok(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(),
            (false, "/metrics".into())
        );
        assert_eq!(
            ok(b"HEAD /status HTTP/1.0\r\n\r\n").unwrap(),
            (true, "/status".into())
        );
        let status = |h: &[u8]| parse_head(h).err().and_then(|e| e.status());
        assert_eq!(status(b"POST / HTTP/1.1\r\n\r\n"), Some(405));
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(status(b"GET / FTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /  HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"), Some(400));
        assert_eq!(status(b"\r\n\r\n"), Some(400));
    }

    #[test]
    fn parse_response_checks_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(parse_response(r).unwrap(), (200, "hi".into()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn wake_addr_maps_wildcards_to_loopback() {
        let a: SocketAddr = "0.0.0.0:9".parse().unwrap();
        assert_eq!(wake_addr(a), "127.0.0.1:9".parse().unwrap());
        let a: SocketAddr = "[::]:9".parse().unwrap();
        assert_eq!(wake_addr(a), "[::1]:9".parse().unwrap());
    }
}
