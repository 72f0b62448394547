//! RabbitMQ's management HTTP API, where the `rabbitmq_management` plugin is enabled: the listings,
//! unacked counts, rates and bindings that AMQP itself does not give. One short GET per call with basic
//! auth over a plain local connection; JSON in answer. Where the API is not reachable, callers say
//! "not available" with the reason instead of guessing.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::url::Target;

/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most a reply may hold.
const MAX_REPLY: u64 = 32 << 20;

/// Percent-encodes a path segment (a vhost, a queue name).
pub(super) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs `path` from the management API of `target`; the error says why in a sentence.
pub(super) async fn get(target: &Target, path: &str) -> Result<Value, String> {
    let Some((host, port)) = &target.management else {
        return Err("the management API is turned off (?management=off)".into());
    };
    let call = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|e| format!("the management API is not reachable at http://{host}:{port} ({e}); enable the rabbitmq_management plugin or give ?management=http://HOST:PORT"))?;
        let auth = base64::engine::general_purpose::STANDARD.encode(target.login.as_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        stream.take(MAX_REPLY).read_to_end(&mut reply).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(reply)
    };
    let reply = tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| format!("the management API at http://{host}:{port} did not answer within 5 s"))??;
    parse(&reply)
}

/// The JSON body of an HTTP reply, or why there is none.
fn parse(reply: &[u8]) -> Result<Value, String> {
    let split =
        reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the management API sent no HTTP reply")?;
    let head = String::from_utf8_lossy(&reply[..split]).to_ascii_lowercase();
    let body = &reply[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    match status.as_str() {
        "200" => {}
        "401" => return Err("the management API refused this login (401)".into()),
        "404" => return Err("not found (404)".into()),
        other => return Err(format!("the management API answered HTTP {other}")),
    }
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body)? } else { body.to_vec() };
    serde_json::from_slice(&body)
        .map_err(|e| format!("the management API sent JSON this client cannot read: {e}"))
}

/// The body of a chunked reply.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a chunk size \"{size_text}\" that is not hex"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// A whole number in `v` at `key`, 0 when absent.
pub(super) fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A rate at `stats.<what>_details.rate`, when the API measured it.
pub(super) fn rate(v: &Value, what: &str) -> Option<f64> {
    v.get("message_stats")?.get(format!("{what}_details"))?.get("rate")?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_plain_or_chunked_and_errors_are_named() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n[{\"a\":1}]";
        assert_eq!(parse(plain).unwrap()[0]["a"], 1);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[{\"a\r\n5\r\n\":2}]\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap()[0]["a"], 2);
        assert!(parse(b"HTTP/1.1 401 Unauthorized\r\n\r\n").unwrap_err().contains("refused this login"));
        assert!(parse(b"garbage").unwrap_err().contains("no HTTP reply"));
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("orders.eu"), "orders.eu");
    }
}
