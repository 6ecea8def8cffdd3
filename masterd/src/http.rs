//! `GET /metrics` (Prometheus text) and `GET /status` (JSON) on `http_addr`.
//! One request per connection, then close; every read and write is bounded
//! in size and time, so a hostile scraper costs one task for two seconds.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics;
use crate::node::Master;

/// Largest request head read.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time for the request head, and separately for the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes served at once.
pub const CONNECTIONS_MAX: usize = 16;

pub async fn serve(master: Arc<Master>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let master = master.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = answer(&master, stream).await;
        });
    }
}

async fn answer(master: &Master, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > REQUEST_HEAD_BYTES_MAX {
                return Err(std::io::Error::other("bad request head"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await;
    let (status, kind, body) = match read {
        Ok(Ok(())) => {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split(' ');
            match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics")) => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics::render(master),
                ),
                (Some("GET"), Some("/status")) => {
                    ("200 OK", "application/json", metrics::status_json(master))
                }
                (Some("GET"), _) => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /status\n".to_string(),
                ),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                ),
            }
        }
        _ => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(response.as_bytes()))
        .await
        .map_err(std::io::Error::other)??;
    stream.shutdown().await
}
