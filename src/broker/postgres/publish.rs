//! Publishing: each message goes to its topic's table when one exists (an INSERT; the triggers number,
//! fan out and NOTIFY), and to a channel otherwise (`pg_notify`). A batch is one transaction, so its
//! notifications are seen together on commit and a failure publishes none of it.

use std::collections::{HashMap, HashSet};

use super::PostgresBroker;
use crate::broker::BrokerError;
use crate::model::{EngineError, Name, PublishReceipt, PublishRequest};

/// NOTIFY's payload limit: "shorter than 8000 bytes" in the default configuration.
pub(super) const NOTIFY_MAX: usize = 7999;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer channel names would be cut.
pub(super) const CHANNEL_MAX: usize = 63;

/// Refuses a channel name LISTEN/NOTIFY would truncate.
pub(super) fn check_channel(name: &str) -> Result<(), BrokerError> {
    if name.len() > CHANNEL_MAX {
        return Err(BrokerError::Invalid(format!(
            "channel \"{name}\" is {} bytes; PostgreSQL channel names are at most {CHANNEL_MAX} (a table topic's name may be longer: `topic create`)",
            name.len()
        )));
    }
    Ok(())
}

/// Why a message cannot be a NOTIFY payload, if it cannot.
fn check_notify(m: &PublishRequest) -> Result<(), BrokerError> {
    check_channel(m.subject.as_str())?;
    if m.key.is_some() || !m.headers.is_empty() || m.msg_id.is_some() {
        return Err(BrokerError::Invalid(format!(
            "\"{}\" is a channel: NOTIFY carries only a text payload, no key, id or headers (`topic create {}` makes a table topic that keeps them)",
            m.subject, m.subject
        )));
    }
    if m.payload.len() > NOTIFY_MAX {
        return Err(BrokerError::Engine(EngineError::MessageTooLarge {
            topic: m.subject.clone(),
            size: m.payload.len(),
            max: u32::try_from(NOTIFY_MAX).unwrap_or(u32::MAX),
        }));
    }
    if std::str::from_utf8(&m.payload).is_err() || m.payload.contains(&0) {
        return Err(BrokerError::Invalid(format!(
            "\"{}\" is a channel: NOTIFY payloads are text, and this one is not UTF-8 (or holds a NUL byte); `topic create {}` makes a table topic for binary payloads",
            m.subject, m.subject
        )));
    }
    Ok(())
}

/// A run of consecutive messages of one kind.
enum Run<'a> {
    Table(Vec<&'a PublishRequest>),
    Channel(Vec<&'a PublishRequest>),
}

impl PostgresBroker {
    /// Which of `names` have tables, with their size limits.
    pub(super) async fn table_limits(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Option<i64>>, BrokerError> {
        let client = self.client().await?;
        let sql = format!("SELECT name, max_msg_bytes FROM {}.topics WHERE name = ANY($1)", self.target.s());
        let rows = client.query(&sql, &[&names]).await.map_err(|e| self.fail(&e))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1))).collect())
    }

    /// Whether `topic` is a table topic.
    pub(super) async fn table_exists(&self, topic: &Name) -> Result<bool, BrokerError> {
        Ok(self.table_limits(&[topic.as_str().to_string()]).await?.contains_key(topic.as_str()))
    }

    pub(super) async fn publish_all(
        &self,
        msgs: &[PublishRequest],
    ) -> Result<Vec<PublishReceipt>, BrokerError> {
        let names: Vec<String> =
            msgs.iter().map(|m| m.subject.as_str().to_string()).collect::<HashSet<_>>().into_iter().collect();
        let tables = self.table_limits(&names).await?;
        let at = |index: usize, e: BrokerError| BrokerError::Batch { index, source: Box::new(e) };
        let mut runs: Vec<Run<'_>> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            match tables.get(m.subject.as_str()) {
                Some(limit) => {
                    let size = m.payload.len() + m.key.as_ref().map_or(0, |k| k.len());
                    if let Some(max) = limit
                        && i64::try_from(size).unwrap_or(i64::MAX) > *max
                    {
                        let e = EngineError::MessageTooLarge {
                            topic: m.subject.clone(),
                            size,
                            max: u32::try_from(*max).unwrap_or(u32::MAX),
                        };
                        return Err(at(i, e.into()));
                    }
                    match runs.last_mut() {
                        Some(Run::Table(v)) => v.push(m),
                        _ => runs.push(Run::Table(vec![m])),
                    }
                }
                None => {
                    check_notify(m).map_err(|e| at(i, e))?;
                    // PostgreSQL folds identical notifications of one transaction into one: a repeat
                    // starts a run of its own, sent as its own statement.
                    match runs.last_mut() {
                        Some(Run::Channel(v))
                            if !v.iter().any(|o| o.subject == m.subject && o.payload == m.payload) =>
                        {
                            v.push(m);
                        }
                        _ => runs.push(Run::Channel(vec![m])),
                    }
                }
            }
        }
        let mut client = self.client().await?;
        // One transaction for the batch; when a notification repeats, one per run, so that each copy
        // is delivered.
        let repeats = runs.windows(2).any(|w| matches!(w, [Run::Channel(_), Run::Channel(_)]));
        let groups: Vec<&[Run<'_>]> = if repeats { runs.chunks(1).collect() } else { vec![&runs[..]] };
        let mut receipts = Vec::with_capacity(msgs.len());
        for group in groups {
            let tx = client.transaction().await.map_err(|e| self.fail(&e))?;
            for run in group {
                self.send_run(&tx, run, &mut receipts).await?;
            }
            tx.commit().await.map_err(|e| at(receipts.len(), self.fail(&e)))?;
        }
        Ok(receipts)
    }

    async fn send_run(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        run: &Run<'_>,
        receipts: &mut Vec<PublishReceipt>,
    ) -> Result<(), BrokerError> {
        let at = |index: usize, e: BrokerError| BrokerError::Batch { index, source: Box::new(e) };
        let s = self.target.s();
        match run {
            Run::Table(v) => {
                let topics: Vec<&str> = v.iter().map(|m| m.subject.as_str()).collect();
                let keys: Vec<Option<&[u8]>> = v.iter().map(|m| m.key.as_deref()).collect();
                let headers: Vec<String> = v
                    .iter()
                    .map(|m| serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".into()))
                    .collect();
                let ids: Vec<Option<&str>> = v.iter().map(|m| m.msg_id.as_deref()).collect();
                let payloads: Vec<&[u8]> = v.iter().map(|m| m.payload.as_ref()).collect();
                let sql = format!(
                    "INSERT INTO {s}.messages (topic, key, headers, msg_id, payload)
                     SELECT t, k, h::jsonb, i, p
                     FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bytea[])
                          WITH ORDINALITY AS u(t, k, h, i, p, n)
                     ORDER BY n RETURNING topic, seq"
                );
                let rows = tx
                    .query(&sql, &[&topics, &keys, &headers, &ids, &payloads])
                    .await
                    .map_err(|e| at(receipts.len(), self.fail(&e)))?;
                for r in rows {
                    receipts.push(PublishReceipt {
                        topic: Name::new(r.get::<_, &str>(0)).ok(),
                        partition: 0,
                        seq: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                        taps: 0,
                        duplicate: false,
                        unrouted: false,
                    });
                }
            }
            Run::Channel(v) => {
                let channels: Vec<&str> = v.iter().map(|m| m.subject.as_str()).collect();
                let payloads: Vec<&str> =
                    v.iter().map(|m| std::str::from_utf8(&m.payload).unwrap_or_default()).collect();
                let sql = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c, p, n) ORDER BY n";
                tx.query(sql, &[&channels, &payloads])
                    .await
                    .map_err(|e| at(receipts.len(), self.fail(&e)))?;
                for _ in v {
                    receipts.push(PublishReceipt::default());
                }
            }
        }
        Ok(())
    }
}
