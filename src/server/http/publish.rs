//! `POST /topics/NAME`: the body is the payload, `?key=` the key, `?msg_id=` the idempotency key, and
//! the request's headers the message's headers, except those that describe the HTTP exchange rather
//! than the message ([`EXCLUDED`]).

use crate::model::{Headers, Name, PublishRequest};
use crate::protocol::ErrorCode;

use super::head::Head;
use super::response::HttpError;

/// Request headers that do not become message headers: hop-by-hop and framing headers, the token, and
/// what an HTTP client adds about itself on every request (`curl` sends `User-Agent` and `Accept`,
/// Python's urllib `Accept-Encoding`, browsers `Origin`, `Referer`, `Cookie` and the `Sec-*` family).
/// `Content-Type` is kept: it says what the payload is.
pub(crate) const EXCLUDED: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "last-event-id",
    "origin",
    "proxy-authorization",
    "proxy-connection",
    "referer",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
];

/// Whether a request header stays out of the message.
fn excluded(name: &str) -> bool {
    EXCLUDED.contains(&name) || name.starts_with("sec-")
}

/// The message headers of a request: names lower-cased, repeated headers joined with `, ` in order.
/// A value that is not UTF-8 is refused (message headers are text everywhere else).
pub(crate) fn message_headers(head: &Head) -> Result<Headers, HttpError> {
    let mut headers = Headers::new();
    for (name, value) in &head.headers {
        if excluded(name) {
            continue;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            let msg = format!("header \"{name}\" is not UTF-8; message headers are text");
            return Err(HttpError::new(ErrorCode::BadField, msg));
        };
        headers
            .entry(name.clone())
            .and_modify(|joined: &mut String| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    Ok(headers)
}

/// The body's length from `Content-Length` (none means an empty body); a chunked or otherwise
/// encoded body is refused with 411, as are lengths that disagree or do not parse.
pub(crate) fn body_length(head: &Head) -> Result<usize, HttpError> {
    if head.header("transfer-encoding").is_some() {
        let msg = "send the body with a Content-Length: chunked uploads are not accepted";
        return Err(HttpError::with_status(411, ErrorCode::BadField, msg));
    }
    let mut length = None;
    for (_, value) in head.headers.iter().filter(|(n, _)| n == "content-length") {
        let parsed = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        match (parsed, length) {
            (None, _) => {
                let shown = String::from_utf8_lossy(value);
                let msg = format!("Content-Length \"{shown}\" is not a number of bytes");
                return Err(HttpError::new(ErrorCode::BadField, msg));
            }
            (Some(n), Some(m)) if n != m => {
                return Err(HttpError::new(
                    ErrorCode::BadField,
                    "Content-Length is given twice, differently",
                ));
            }
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length.unwrap_or(0))
}

/// The publish request for `subject` from the request head and its body.
pub(crate) fn request(subject: Name, head: &Head, body: Vec<u8>) -> Result<PublishRequest, HttpError> {
    let mut req = PublishRequest::new(subject, body);
    req.headers = message_headers(head)?;
    req.key = head.param("key").map(|k| bytes::Bytes::copy_from_slice(k.as_bytes()));
    req.msg_id = head.param("msg_id").map(str::to_string);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::head::parse;

    fn head(raw: &[u8]) -> Head {
        parse(raw).unwrap().unwrap().0
    }

    #[test]
    fn request_headers_become_message_headers_except_the_exchange_s_own() {
        let h = head(
            b"POST /topics/t HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\
              Authorization: Bearer s\r\nContent-Type: application/json\r\nX-Trace: 1\r\nX-Trace: 2\r\n\
              Sec-Fetch-Mode: cors\r\nContent-Length: 2\r\n\r\n",
        );
        let headers = message_headers(&h).unwrap();
        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["content-type", "x-trace"]);
        assert_eq!(headers["x-trace"], "1, 2");
    }

    #[test]
    fn a_header_value_that_is_not_utf8_is_refused_naming_it() {
        let e = message_headers(&head(b"POST / HTTP/1.1\r\nX-Bin: \xff\xfe\r\n\r\n")).unwrap_err();
        assert_eq!((e.status, e.code), (400, ErrorCode::BadField));
        assert!(e.message.contains("x-bin"), "{}", e.message);
    }

    #[test]
    fn the_body_length_comes_from_content_length_and_chunked_is_refused() {
        assert_eq!(body_length(&head(b"POST / HTTP/1.1\r\n\r\n")).unwrap(), 0);
        assert_eq!(body_length(&head(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")).unwrap(), 12);
        let chunked = body_length(&head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert_eq!(chunked.unwrap_err().status, 411);
        let bad = body_length(&head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"));
        assert_eq!(bad.unwrap_err().status, 400);
        let twice = body_length(&head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
        assert_eq!(twice.unwrap_err().status, 400);
    }

    #[test]
    fn key_and_msg_id_come_from_the_query() {
        let h = head(b"POST /topics/t?key=user%2F7&msg_id=abc HTTP/1.1\r\n\r\n");
        let req = request(Name::new("t").unwrap(), &h, b"hi".to_vec()).unwrap();
        assert_eq!(req.key.as_deref(), Some(&b"user/7"[..]));
        assert_eq!(req.msg_id.as_deref(), Some("abc"));
        assert_eq!(&req.payload[..], b"hi");
    }
}
