//! HTTP push (the Google Pub/Sub push contract): where a push subscription sends its messages, and the
//! figures its pusher reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Request headers the pusher sets itself, which a subscription may not override.
const RESERVED_HEADERS: [&str; 6] =
    ["host", "content-length", "transfer-encoding", "connection", "content-type", "upgrade"];

/// Where a push subscription POSTs each message, and the extra request headers it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushConfig {
    /// An `http://` or `https://` URL.
    pub endpoint: String,
    /// Extra request headers (name → value), e.g. an `authorization` the endpoint checks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl PushConfig {
    /// A push to `endpoint` with no extra headers.
    pub fn new(endpoint: impl Into<String>) -> Self {
        PushConfig { endpoint: endpoint.into(), headers: BTreeMap::new() }
    }

    /// Why this cannot be pushed to, if it cannot: only absolute `http://` and `https://` URLs with a
    /// host, and header names and values HTTP accepts (none of the ones the pusher sets itself).
    pub fn problem(&self) -> Option<String> {
        let endpoint = &self.endpoint;
        let uri = match endpoint.parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(e) => return Some(format!("push endpoint \"{endpoint}\" is not a URL: {e}")),
        };
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http" | "https") => {}
            Some(other) => {
                return Some(format!(
                    "push endpoint \"{endpoint}\": scheme \"{other}\" is not supported; use http:// or https://"
                ));
            }
            None => {
                return Some(format!(
                    "push endpoint \"{endpoint}\" needs a scheme: http://HOST[:PORT]/PATH or https://…"
                ));
            }
        }
        match uri.authority() {
            None => return Some(format!("push endpoint \"{endpoint}\" has no host")),
            Some(a) if a.host().is_empty() => {
                return Some(format!("push endpoint \"{endpoint}\" has no host"));
            }
            Some(a) if a.as_str().contains('@') => {
                return Some(format!(
                    "push endpoint \"{endpoint}\": credentials in the URL are not sent; use --push-header authorization=…"
                ));
            }
            Some(_) => {}
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Some(format!("push header \"{name}\" is not a valid HTTP header name"));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Some(format!(
                    "push header \"{name}\" is set by the pusher itself and cannot be given"
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Some(format!("push header \"{name}\": its value is not a valid HTTP header value"));
            }
        }
        None
    }
}

/// What a push subscription's pusher has done, for `subs info`, `peek` and the TUI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushInfo {
    /// The endpoint.
    pub endpoint: String,
    /// Requests made (each delivery pushed is one attempt).
    pub attempts: u64,
    /// Requests answered with a 2xx (acked).
    pub succeeded: u64,
    /// Requests that failed (another status, a connection error, or no answer by the ack deadline).
    pub failed: u64,
    /// Requests under way now.
    pub in_flight: u64,
    /// The status code of the last answer, if any came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last failure, described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failures in a row since the last success.
    pub consecutive_failures: u32,
    /// The pause between pushes the failures in a row have caused, milliseconds (0 = full speed).
    pub slowdown_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        assert_eq!(PushConfig::new("http://127.0.0.1:8080/push").problem(), None);
        assert_eq!(PushConfig::new("HTTPS://example.com/").problem(), None);
        for bad in ["ftp://example.com/", "example.com/push", "file:///etc/passwd", "ws://h/", "http://", ""]
        {
            assert!(PushConfig::new(bad).problem().is_some(), "{bad} accepted");
        }
        let scheme = PushConfig::new("ftp://example.com/").problem().unwrap_or_default();
        assert!(scheme.contains("http:// or https://"), "{scheme}");
        assert!(PushConfig::new("http://user:pw@h/").problem().is_some());
    }

    #[test]
    fn headers_are_checked() {
        let mut c = PushConfig::new("http://h/");
        c.headers.insert("authorization".into(), "Bearer x".into());
        assert_eq!(c.problem(), None);
        c.headers.insert("Content-Length".into(), "1".into());
        assert!(c.problem().is_some_and(|p| p.contains("set by the pusher")));
        let mut c = PushConfig::new("http://h/");
        c.headers.insert("bad name".into(), "v".into());
        assert!(c.problem().is_some());
        let mut c = PushConfig::new("http://h/");
        c.headers.insert("x".into(), "line\nbreak".into());
        assert!(c.problem().is_some());
    }
}
