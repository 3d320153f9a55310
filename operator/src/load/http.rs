//! A minimal HTTP/1.1 client for the workers' web port (`/v1/loads`, `/v1/stats`): one request
//! per connection, JSON bodies, a deadline. The operator needs nothing more, so no HTTP client
//! crate is pulled in.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read (a load's progress or a worker's stats are a few KB).
const MAX_ANSWER: u64 = 1 << 20;

/// Sends `method path` with `body` (JSON) to `host:port`; returns the status code and body.
pub async fn call(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut out = Vec::new();
        s.take(MAX_ANSWER)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        parse(&out).map_err(|e| format!("{method} {path} on {addr}: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within {timeout:?}"))?
}

/// Splits a whole HTTP/1.1 answer into status and body (with `Content-Length` or read to close;
/// chunked bodies are decoded).
pub fn parse(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("truncated answer (no header end)")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next()))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
        if n == 0 {
            break;
        }
        let chunk = after.get(..n).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or("");
    }
    Ok((status, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_length_or_chunks_are_parsed() {
        let (s, b) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let (s, b) =
            parse(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_str()), (404, "abcde"));
        assert!(parse(b"HTTP/1.1 200").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_naming_the_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = call(
            "127.0.0.1",
            port,
            "GET",
            "/v1/stats",
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
