//! `postgres[ql]://[user[:pass]@]host[:port]/db[?schema=…&sslmode=…&ca=…&ack_deadline=…&poll=…]`: where to
//! connect, as whom, in which schema, and how pubsub's errors read.

use std::time::Duration;

use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use super::tls::Tls;

use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;

/// The schema pubsub keeps its tables in unless `?schema=` names another.
pub(super) const DEFAULT_SCHEMA: &str = "pubsub";

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub(super) struct Target {
    /// What the client library connects with (holds the password; never printed).
    pub(super) config: tokio_postgres::Config,
    /// The TLS connector (used as `sslmode` says).
    pub(super) tls: Tls,
    /// What messages show: the URL without its password.
    pub(super) shown: String,
    /// The schema of pubsub's tables, functions and view.
    pub(super) schema: String,
    /// Lease length of subscriptions `sub -s` creates (`?ack_deadline=`).
    pub(super) ack_deadline: Duration,
    /// The safety-net poll of workers and table readers, for notifications missed (`?poll=`).
    pub(super) poll: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `s` is a plain lower-case identifier (what a schema name may be: no quoting surprises).
pub(super) fn plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 48
}

impl Target {
    /// Parses `url`; unknown options and malformed values are refused with the URL redacted.
    pub(super) fn parse(url: &str) -> Result<Target, BrokerError> {
        let parsed = BrokerUrl::parse(url)?;
        if !matches!(parsed.scheme.as_str(), "postgres" | "postgresql") {
            return Err(parsed.invalid("use postgres:// or postgresql://"));
        }
        let mut o = parsed.options();
        let schema = o.text("schema").unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        let sslmode = o.choice("sslmode", &["disable", "prefer", "require", "verify-full"])?;
        let ca = o.text("ca");
        let ack_deadline = o.duration("ack_deadline")?.unwrap_or(Duration::from_secs(30));
        let poll = o.duration("poll")?.unwrap_or(Duration::from_secs(5));
        o.finish()?;
        if ca.is_some() && sslmode != Some("verify-full") {
            return Err(
                parsed.invalid("ca= is for sslmode=verify-full (the other modes check no certificate)")
            );
        }
        let tls = match sslmode {
            Some("verify-full") => crate::broker::kit::tls::verified(ca.as_deref().map(std::path::Path::new)),
            _ => crate::broker::kit::tls::unverified(),
        }
        .map_err(|e| parsed.invalid(e))?;
        let ssl = match sslmode {
            Some("disable") => SslMode::Disable,
            Some("require" | "verify-full") => SslMode::Require,
            _ => SslMode::Prefer,
        };
        if !plain_identifier(&schema) {
            return Err(parsed.invalid(format!(
                "schema \"{schema}\": use lower-case letters, digits and _ (at most 48, not starting with a digit)"
            )));
        }
        let Some((host, port)) = parsed.addresses(5432).into_iter().next() else {
            return Err(parsed.invalid("it names no host"));
        };
        if parsed.hosts.len() > 1 {
            return Err(parsed.invalid("one host only"));
        }
        let db = crate::broker::url::percent_decode(&parsed.path);
        if db.is_empty() || db.contains('/') {
            return Err(parsed.invalid("name the database after the host, as in postgres://host/mydb"));
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(host.trim_start_matches('[').trim_end_matches(']'))
            .port(port)
            .dbname(&db)
            .user(parsed.user.as_deref().unwrap_or("postgres"))
            .application_name(format!("pubsub {}", std::process::id()))
            .connect_timeout(CONNECT_TIMEOUT)
            .ssl_mode(ssl);
        if let Some(pass) = &parsed.password {
            config.password(pass.as_bytes());
        }
        let tls = Tls(Arc::new(tls));
        Ok(Target { config, tls, shown: parsed.to_string(), schema, ack_deadline, poll })
    }

    /// Opens a connection as `sslmode` says; the caller drives the returned connection.
    pub(super) async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, super::tls::Stream<tokio_postgres::Socket>>,
        ),
        BrokerError,
    > {
        self.config.connect(self.tls.clone()).await.map_err(|e| error(&self.shown, &e))
    }

    /// The schema, quoted for SQL.
    pub(super) fn s(&self) -> String {
        format!("\"{}\"", self.schema)
    }

    /// The channel new table messages are announced on (payload `SEQ TOPIC`).
    pub(super) fn messages_channel(&self) -> String {
        format!("{}_messages", self.schema)
    }

    /// The channel delivery state changes are announced on (a JSON object each).
    pub(super) fn status_channel(&self) -> String {
        format!("{}_status", self.schema)
    }
}

/// A client error in the model's terms: unreachable (exit 3), authentication or a missing database
/// (exit 5), a lost connection, or the server's refusal. Never prints the password (the library does not
/// put it in its errors; `url` is the redacted form).
pub(super) fn error(url: &str, e: &tokio_postgres::Error) -> BrokerError {
    let url = url.to_string();
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let text = db.message().to_string();
        if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            return BrokerError::Auth { url, reason: text };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return BrokerError::Auth {
                url,
                reason: format!("{text} (create it with `createdb`, or name another database in the URL)"),
            };
        }
        if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW {
            return BrokerError::Disconnected { url, reason: text };
        }
        return BrokerError::Invalid(match db.detail() {
            Some(detail) => format!("PostgreSQL: {text} ({detail})"),
            None => format!("PostgreSQL: {text}"),
        });
    }
    if e.is_closed() {
        return BrokerError::Disconnected { url, reason: "the connection to PostgreSQL closed".into() };
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return BrokerError::Unreachable { url, reason: io.to_string() };
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("timeout") || text.contains("timed out") {
        return BrokerError::Unreachable {
            url,
            reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        };
    }
    BrokerError::Protocol(format!("PostgreSQL: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_config_and_our_options() {
        let t =
            Target::parse("postgresql://app:s3cret@127.0.0.1:5433/shop?schema=jobs&poll=1s&ack_deadline=2s")
                .unwrap();
        assert_eq!(t.shown, "postgresql://app:***@127.0.0.1:5433/shop?schema=jobs&poll=1s&ack_deadline=2s");
        assert_eq!(t.schema, "jobs");
        assert_eq!((t.poll, t.ack_deadline), (Duration::from_secs(1), Duration::from_secs(2)));
        assert_eq!(t.config.get_dbname(), Some("shop"));
        assert_eq!(t.config.get_user(), Some("app"));
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = Target::parse("postgres://h/db").unwrap();
        assert_eq!((t.schema.as_str(), t.messages_channel()), ("pubsub", "pubsub_messages".to_string()));
        for (bad, says) in [
            ("postgres://h/db?schema=Bad-Name", "schema \"Bad-Name\""),
            ("postgres://h/db?color=red", "unknown option \"color\""),
            ("postgres://h", "name the database"),
            ("postgres://h/db?sslmode=require&ca=/x.pem", "ca= is for sslmode=verify-full"),
            ("postgres://h/db?sslmode=verify", "use disable, prefer, require or verify-full"),
            ("postgres://h/db?sslmode=verify-full&ca=/nonexistent.pem", "ca /nonexistent.pem"),
        ] {
            let err = Target::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
