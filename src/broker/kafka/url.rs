//! `kafka://[user:password@]host:port[,host:port…][?options]`: the bootstrap servers, the login, and the
//! librdkafka settings pubsub lets a URL choose.

use std::time::Duration;

use crate::broker::BrokerError;
use crate::broker::url::BrokerUrl;

/// The port of a Kafka listener when the URL names none.
const DEFAULT_PORT: u16 = 9092;

/// A parsed Kafka URL. Its `Debug` shows the redacted URL only.
#[derive(Clone)]
pub(super) struct Target {
    /// What messages show: the URL without its password.
    pub(super) shown: String,
    /// `bootstrap.servers`.
    pub(super) servers: String,
    /// The consumer group `sub` joins when no `-s` is given (`?group=`).
    pub(super) group: Option<String>,
    /// `client.id`.
    pub(super) client_id: String,
    /// `acks`: `all`, `1` or `0`.
    pub(super) acks: &'static str,
    /// `compression.type`.
    pub(super) compression: &'static str,
    /// `security.protocol`.
    pub(super) security: &'static str,
    /// `sasl.mechanism`, when SASL is used.
    pub(super) mechanism: &'static str,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    /// `ssl.ca.location`.
    pub(super) ca: Option<String>,
    /// `isolation.level`.
    pub(super) isolation: &'static str,
    /// A group member's `session.timeout.ms` (`?session_timeout=`): how long the group waits for a
    /// member that stopped answering before its partitions move.
    pub(super) session_timeout: Duration,
    /// Most records in one produce batch (`?batch=`, `batch.num.messages`).
    pub(super) batch: u32,
    /// Replicas of a topic `topic create` makes; -1 leaves it to the broker's default.
    pub(super) replication: i32,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.shown)
    }
}

impl Target {
    /// Parses `url`; unknown options and malformed values are refused with the URL redacted.
    pub(super) fn parse(url: &str) -> Result<Target, BrokerError> {
        let parsed = BrokerUrl::parse(url)?;
        if parsed.scheme != "kafka" {
            return Err(parsed.invalid(format!("scheme {}: use kafka://", parsed.scheme)));
        }
        if !parsed.path.is_empty() {
            return Err(parsed.invalid("a Kafka URL has no path: kafka://host:port[,host:port]"));
        }
        let mut o = parsed.options();
        let group = o.text("group");
        let client_id = o.text("client_id").unwrap_or_else(|| "pubsub".to_string());
        let acks = match o.choice("acks", &["all", "1", "0", "-1"])? {
            Some("1") => "1",
            Some("0") => "0",
            _ => "all",
        };
        let compression =
            o.choice("compression", &["none", "lz4", "zstd", "snappy", "gzip"])?.unwrap_or("none");
        let security = o.choice("security", &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])?;
        let mechanism = o
            .choice_among(
                "sasl_mechanism",
                &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            )?
            .unwrap_or("PLAIN");
        let ca = o.text("ca");
        let isolation = match o.choice("isolation", &["read_committed", "read_uncommitted"])? {
            Some("read_committed") => "read_committed",
            _ => "read_uncommitted",
        };
        let session_timeout = o.duration("session_timeout")?.unwrap_or(Duration::from_secs(10));
        let replication = o.number::<i32>("replication")?.unwrap_or(-1);
        let batch = o.number::<u32>("batch")?.unwrap_or(10_000);
        o.finish()?;
        // A login in the URL means SASL; TLS when a CA is given.
        let security = match (security, parsed.user.is_some(), ca.is_some()) {
            (Some(s), _, _) => s,
            (None, true, true) => "sasl_ssl",
            (None, true, false) => "sasl_plaintext",
            (None, false, true) => "ssl",
            (None, false, false) => "plaintext",
        };
        if security.starts_with("sasl") && parsed.user.is_none() {
            return Err(
                parsed.invalid(format!("security={security} needs a login: kafka://USER:PASSWORD@host:port"))
            );
        }
        if !security.starts_with("sasl") && parsed.user.is_some() {
            return Err(parsed.invalid(format!(
                "a login needs SASL, but security={security}: use sasl_plaintext or sasl_ssl"
            )));
        }
        let servers =
            parsed.addresses(DEFAULT_PORT).iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>();
        Ok(Target {
            shown: parsed.to_string(),
            servers: servers.join(","),
            group,
            client_id,
            acks,
            compression,
            security,
            mechanism,
            user: parsed.user.clone(),
            password: parsed.password.clone(),
            ca,
            isolation,
            session_timeout,
            replication,
            batch,
        })
    }

    /// The settings every client of this URL shares (producer, consumers, admin).
    pub(super) fn config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security)
            // librdkafka logs to its own callback; pubsub reports what matters as errors instead.
            .set("log_level", "0");
        if self.security.starts_with("sasl") {
            c.set("sasl.mechanism", self.mechanism);
            c.set("sasl.username", self.user.as_deref().unwrap_or_default());
            c.set("sasl.password", self.password.as_deref().unwrap_or_default());
        }
        if let Some(ca) = &self.ca {
            c.set("ssl.ca.location", ca);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_servers_settings_and_a_redacted_form() {
        let t = Target::parse("kafka://alice:s3cret@k1:9093,k2?acks=1&compression=zstd&group=g").unwrap();
        assert_eq!(t.servers, "k1:9093,k2:9092");
        assert_eq!((t.acks, t.compression, t.security), ("1", "zstd", "sasl_plaintext"));
        assert_eq!(t.group.as_deref(), Some("g"));
        assert_eq!(t.shown, "kafka://alice:***@k1:9093,k2?acks=1&compression=zstd&group=g");
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = Target::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(
            (t.acks, t.security, t.isolation, t.client_id.as_str()),
            ("all", "plaintext", "read_uncommitted", "pubsub")
        );
        let t = Target::parse("kafka://u:p@h?security=sasl_ssl&sasl_mechanism=scram-sha-512&ca=/tmp/ca.pem")
            .unwrap();
        assert_eq!(
            (t.security, t.mechanism, t.ca.as_deref()),
            ("sasl_ssl", "SCRAM-SHA-512", Some("/tmp/ca.pem"))
        );
        for (bad, says) in [
            ("kafka://h?acks=2", "acks \"2\": use all, 1, 0 or -1"),
            ("kafka://h?compression=brotli", "use none, lz4, zstd, snappy or gzip"),
            ("kafka://h?colour=red", "unknown option \"colour\""),
            ("kafka://h?security=sasl_plaintext", "needs a login"),
            ("kafka://u:pw@h?security=plaintext", "a login needs SASL"),
            ("kafka://h/topic", "has no path"),
            ("kafka://h:x", "the port is not a number"),
        ] {
            let err = Target::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
