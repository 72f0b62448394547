//! The request head every connection starts with: a WebSocket upgrade or a plain HTTP request. It is
//! read once, within the socket's allowance before authentication, and the socket handed on replays
//! the bytes read so far ([`Rewind`]), so that tungstenite's handshake sees exactly what the client sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::broker::url::percent_decode_bytes;

/// Most header lines a request may have.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The method as sent (`GET`, `POST`, …).
    pub method: String,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    /// Query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names lower-cased, values as sent (not necessarily UTF-8).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether the client may send another request on the connection after this one: HTTP/1.1
    /// without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive` (the pre-1.1
    /// convention; any other HTTP/1.0 connection carries one request).
    pub persistent: bool,
    /// An HTTP/1.0 request that asked to keep the connection: its answers must say they keep it
    /// (`Connection: keep-alive`), or the client takes the end of the answer as the end of the
    /// connection.
    pub keep_alive_1_0: bool,
}

/// Why no head could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// The client closed before sending a whole head.
    #[error("the connection closed before a request head arrived")]
    Closed,
    /// The head is larger than the allowance.
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
    /// The head has more header lines than we read.
    #[error("the request has more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// Not an HTTP/1.1 request.
    #[error("not an HTTP/1.x request: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("reading the request failed: {0}")]
    Io(#[from] io::Error),
}

impl Head {
    /// The first value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of query parameter `name`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether this asks for a WebSocket: an `Upgrade` header naming `websocket` among its tokens.
    pub(crate) fn is_websocket(&self) -> bool {
        self.headers.iter().filter(|(n, _)| n == "upgrade").any(|(_, v)| {
            v.split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
    }
}

/// Parses a request head at the start of `buf`: the head and its length in bytes, `None` while it is
/// incomplete.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HeadError::Malformed("no request line".into()));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query(name), decode_query(value))
        })
        .collect();
    let headers: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
    let connection_says = |word: &[u8]| {
        headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .any(|(_, v)| v.split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(word)))
    };
    let close = connection_says(b"close");
    let keep_alive_1_0 = request.version == Some(0) && connection_says(b"keep-alive") && !close;
    let persistent = (request.version == Some(1) && !close) || keep_alive_1_0;
    let head = Head {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers,
        persistent,
        keep_alive_1_0,
    };
    Ok(Some((head, len)))
}

/// A query part decoded: `+` is a space, `%XX` a byte; bytes that are not UTF-8 become U+FFFD.
fn decode_query(s: &str) -> String {
    let spaced = s.replace('+', " ");
    String::from_utf8_lossy(&percent_decode_bytes(&spaced)).into_owned()
}

/// Reads from `socket` until a whole head has arrived, or `max` bytes have without one (a socket with a
/// byte allowance may stop sooner). Returns the head and the socket, which replays every byte read,
/// the head's included.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    mut socket: S,
    max: usize,
) -> (Result<(Head, usize), HeadError>, Rewind<S>) {
    let mut buf = Vec::with_capacity(1024);
    let outcome = loop {
        let mut chunk = [0u8; 4096];
        let n = match socket.read(&mut chunk).await {
            Ok(0) => break Err(HeadError::Closed),
            Ok(n) => n,
            Err(e) if super::super::admission::is_too_much_before_hello(&e) => {
                break Err(HeadError::TooLarge(max));
            }
            Err(e) => break Err(HeadError::Io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Ok(Some(parsed)) => break Ok(parsed),
            Ok(None) if buf.len() >= max => break Err(HeadError::TooLarge(max)),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    (outcome, Rewind { prefix: buf, at: 0, inner: socket })
}

/// A socket that first gives back bytes already read from it.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Drops the first `n` bytes still to be replayed (the head, once it has been parsed).
    pub(crate) fn skip(&mut self, n: usize) {
        self.at = self.at.saturating_add(n).min(self.prefix.len());
    }

    /// The next request head of a persistent connection: parsed from the bytes not yet replayed (a
    /// pipelined request) and what the socket delivers after them, at most `max` bytes. Once it is
    /// read, those bytes are replayed again, so [`Rewind::skip`] the head's length next.
    pub(crate) async fn next_head(&mut self, max: usize) -> Result<(Head, usize), HeadError>
    where
        S: AsyncRead + Unpin,
    {
        let mut buf = self.prefix.split_off(self.at);
        self.prefix = Vec::new();
        self.at = 0;
        loop {
            if !buf.is_empty() {
                match parse(&buf) {
                    Ok(Some(parsed)) => {
                        self.prefix = buf;
                        return Ok(parsed);
                    }
                    Ok(None) if buf.len() >= max => return Err(HeadError::TooLarge(max)),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut chunk = [0u8; 4096];
            match self.inner.read(&mut chunk).await {
                Ok(0) => return Err(HeadError::Closed),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }

    /// The socket underneath; bytes not yet replayed are dropped.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let left = &this.prefix[this.at..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

forward_writes!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_head_is_parsed_with_its_query_decoded_and_header_names_lower_cased() {
        let raw = b"POST /topics/orders?key=a%20b&flag&x=1+2 HTTP/1.1\r\nHost: h\r\nX-Trace: abc\r\n\r\nbody";
        let (head, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/topics/orders"));
        assert_eq!(head.param("key"), Some("a b"));
        assert_eq!(head.param("flag"), Some(""));
        assert_eq!(head.param("x"), Some("1 2"));
        assert_eq!(head.header("x-trace"), Some(&b"abc"[..]));
        assert!(!head.is_websocket());
    }

    #[test]
    fn an_incomplete_head_waits_and_garbage_is_refused() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap().is_none());
        assert!(matches!(parse(b"\x16\x03\x01 hello"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn an_upgrade_header_naming_websocket_among_others_is_a_websocket() {
        let raw = b"GET / HTTP/1.1\r\nUpgrade: h2c, WebSocket\r\n\r\n";
        assert!(parse(raw).unwrap().unwrap().0.is_websocket());
    }

    #[tokio::test]
    async fn the_socket_handed_on_replays_the_head_and_what_followed_it() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(b"GET /x HTTP/1.1\r\n\r\nextra").await.unwrap();
        drop(client);
        let (head, mut socket) = read(server, 1024).await;
        let (head, len) = head.unwrap();
        assert_eq!(head.path, "/x");
        let mut all = Vec::new();
        socket.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /x HTTP/1.1\r\n\r\nextra");
        assert_eq!(len, all.len() - 5);
    }

    #[test]
    fn http_1_1_without_close_and_http_1_0_with_keep_alive_keep_the_connection() {
        let head = |raw: &[u8]| parse(raw).unwrap().unwrap().0;
        let persistent = |raw: &[u8]| head(raw).persistent;
        assert!(persistent(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(persistent(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!persistent(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n"));
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").keep_alive_1_0);
        // HTTP/1.0 keeps it only when asked, and says so in its answers.
        let kept = head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(kept.persistent && kept.keep_alive_1_0);
        assert!(!persistent(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!persistent(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
    }

    #[tokio::test]
    async fn pipelined_heads_are_read_one_after_another_with_their_bodies_between() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\nGET /c HT")
            .await
            .unwrap();
        let (first, mut socket) = read(server, 1024).await;
        let (head, len) = first.unwrap();
        assert_eq!(head.path, "/a");
        socket.skip(len);
        let mut body = [0u8; 2];
        socket.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hi");
        let (head, len) = socket.next_head(1024).await.unwrap();
        assert_eq!(head.path, "/b");
        socket.skip(len);
        let third = tokio::spawn(async move {
            let got = socket.next_head(1024).await.map(|(h, _)| h.path);
            (got, socket)
        });
        client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let (got, mut socket) = third.await.unwrap();
        assert_eq!(got.unwrap(), "/c");
        drop(client);
        socket.skip(usize::MAX);
        assert!(matches!(socket.next_head(1024).await, Err(HeadError::Closed)));
    }

    #[tokio::test]
    async fn a_head_larger_than_the_limit_is_refused() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b"X-Pad: 0123456789\r\n".to_vec(), 60).flatten());
        client.write_all(&raw).await.unwrap();
        let (head, _) = read(server, 512).await;
        assert!(matches!(head, Err(HeadError::TooLarge(512))), "{head:?}");
    }
}
