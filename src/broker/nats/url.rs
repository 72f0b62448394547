//! The NATS URL: servers, credentials in the URL, and the `?` options (mode, creds, ca, tls, ack_wait,
//! pending, name).

use std::path::PathBuf;
use std::time::Duration;

use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;

/// Which way publishes and subscriptions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// JetStream where a stream captures the subject, core elsewhere.
    Auto,
    /// Core NATS only, even where a stream captures the subject (it still stores what it captures).
    Core,
    /// JetStream only: publishing to a subject no stream captures is an error.
    JetStream,
}

/// The query part of a NATS URL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UrlOptions {
    pub(super) mode: Mode,
    /// A `.creds` file (JWT + seed) for decentralized auth.
    pub(super) creds: Option<PathBuf>,
    /// A PEM file of extra trusted certificates (a private CA).
    pub(super) ca: Option<PathBuf>,
    pub(super) tls: bool,
    /// How long a JetStream consumer created here waits for an ack before redelivering.
    pub(super) ack_wait: Duration,
    /// Messages a live subscription may hold before newer ones are dropped (and counted).
    pub(super) pending: usize,
    pub(super) name: String,
}

impl UrlOptions {
    fn parse(url: &BrokerUrl) -> Result<UrlOptions, BrokerError> {
        let mut o = url.options();
        let options = UrlOptions {
            mode: match o.choice_among(
                "mode",
                &["auto", "core", "jetstream", "js"],
                &["auto", "core", "jetstream"],
            )? {
                Some("core") => Mode::Core,
                Some("jetstream" | "js") => Mode::JetStream,
                _ => Mode::Auto,
            },
            creds: o.text("creds").map(PathBuf::from),
            ca: o.text("ca").map(PathBuf::from),
            tls: o.flag("tls")?.unwrap_or(false),
            ack_wait: o.duration("ack_wait")?.unwrap_or(Duration::from_secs(30)),
            pending: o.number("pending")?.unwrap_or(65_536),
            name: o.text("name").unwrap_or_else(|| "pubsub".into()),
        };
        o.finish()?;
        Ok(options)
    }
}

/// Credentials written into the URL.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum UrlAuth {
    None,
    /// `nats://user:pass@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// Servers, credentials and options of a NATS URL.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) servers: Vec<String>,
    pub(super) auth: UrlAuth,
    pub(super) options: UrlOptions,
    pub(super) shown: String,
}

pub(super) fn parse_url(url: &str) -> Result<Target, BrokerError> {
    let parsed = BrokerUrl::parse(url)?;
    let scheme_tls = match parsed.scheme.as_str() {
        "nats" => false,
        "tls" => true,
        other => return Err(parsed.invalid(format!("scheme {other}: use nats:// or tls://"))),
    };
    if !parsed.path.is_empty() {
        return Err(parsed.invalid("a NATS URL has no path; options go after `?`"));
    }
    let auth = match (&parsed.user, &parsed.password) {
        (Some(user), Some(pass)) => UrlAuth::UserPassword(user.clone(), pass.clone()),
        (Some(token), None) => UrlAuth::Token(token.clone()),
        _ => UrlAuth::None,
    };
    let mut options = UrlOptions::parse(&parsed)?;
    options.tls |= scheme_tls;
    let scheme = if options.tls { "tls" } else { "nats" };
    let servers =
        parsed.addresses(4222).into_iter().map(|(host, port)| format!("{scheme}://{host}:{port}")).collect();
    Ok(Target { servers, auth, options, shown: parsed.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_servers_credentials_and_options() {
        let t = parse_url("nats://alice:s%40cret@127.0.0.1:4223,host2?mode=core&ack_wait=2s").ok();
        let t = t.as_ref();
        assert_eq!(
            t.map(|t| t.servers.clone()),
            Some(vec!["nats://127.0.0.1:4223".to_string(), "nats://host2:4222".to_string()])
        );
        assert_eq!(t.map(|t| t.auth.clone()), Some(UrlAuth::UserPassword("alice".into(), "s@cret".into())));
        assert_eq!(t.map(|t| t.options.mode), Some(Mode::Core));
        assert_eq!(t.map(|t| t.options.ack_wait), Some(Duration::from_secs(2)));
        assert_eq!(
            t.map(|t| t.shown.as_str()),
            Some("nats://alice:***@127.0.0.1:4223,host2?mode=core&ack_wait=2s")
        );
        let token = parse_url("tls://t0ken@h").ok();
        assert_eq!(token.as_ref().map(|t| t.auth.clone()), Some(UrlAuth::Token("t0ken".into())));
        assert_eq!(token.map(|t| t.servers), Some(vec!["tls://h:4222".to_string()]));
        for (bad, why) in [
            ("nats://h?mode=fast", "mode \"fast\""),
            ("nats://h?color=red", "unknown option \"color\""),
            ("nats://h:port", "not a number"),
            ("nats://h/path", "no path"),
            ("nats://h?ack_wait=0s", "ack_wait"),
        ] {
            let err = parse_url(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
