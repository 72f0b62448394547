//! How Redis names, ids and replies map to ours: patterns as PSUBSCRIBE globs, entry ids ↔ seqs,
//! stream entries as messages, and the fields of `XINFO GROUPS` / `XINFO CONSUMERS` replies.

use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use crate::broker::BrokerError;
use crate::model::{Headers, Message, MessageExtra, Name, Pattern, Timestamp};

/// seq for an entry id `MS-N`.
pub(super) fn seq_of(id: &str) -> u64 {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    ms.parse::<u64>().unwrap_or(0).saturating_mul(1000).saturating_add(n.parse::<u64>().unwrap_or(0).min(999))
}

/// Entry id for a seq.
pub(super) fn id_of(seq: u64) -> String {
    format!("{}-{}", seq / 1000, seq % 1000)
}

/// One `XINFO GROUPS` entry.
#[derive(Debug, Default)]
pub(super) struct GroupInfo {
    pub(super) name: String,
    pub(super) consumers: u64,
    pub(super) pending: u64,
    pub(super) last_delivered: String,
    pub(super) lag: Option<u64>,
}

/// A reply's text (bulk, simple or integer).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

pub(super) fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(_) | Value::SimpleString(_) => text(v).parse().ok(),
        _ => None,
    }
}

/// Field pairs of a RESP2 array or RESP3 map.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(items) => items.chunks(2).filter_map(|c| Some((text(c.first()?), c.get(1)?))).collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// `XINFO CONSUMERS`: each consumer's name, pending count and idle time. Redis keeps no delivery or
/// ack counts per consumer, so those stay 0.
pub(super) fn parse_consumers(value: &Value) -> Vec<crate::model::ConsumerInfo> {
    let Value::Array(rows) = value else { return Vec::new() };
    rows.iter()
        .map(|row| {
            let mut c = crate::model::ConsumerInfo::external("");
            for (k, v) in pairs(row) {
                match k.as_str() {
                    "name" => c.id = std::sync::Arc::from(text(v).as_str()),
                    "pending" => c.in_flight = number(v).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                    "idle" => c.idle = Duration::from_millis(number(v).unwrap_or(0)),
                    _ => {}
                }
            }
            c
        })
        .collect()
}

pub(super) fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    let Value::Array(groups) = value else { return Vec::new() };
    groups
        .iter()
        .map(|g| {
            let mut info = GroupInfo::default();
            for (k, v) in pairs(g) {
                match k.as_str() {
                    "name" => info.name = text(v),
                    "consumers" => info.consumers = number(v).unwrap_or(0),
                    "pending" => info.pending = number(v).unwrap_or(0),
                    "last-delivered-id" => info.last_delivered = text(v),
                    "lag" => info.lag = number(v),
                    _ => {}
                }
            }
            info
        })
        .collect()
}

/// Stream entries `[[id, [field, value, …]], …]` as messages.
pub(super) fn entries(topic: &Name, value: &Value) -> Vec<(String, Message)> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let id = text(parts.first()?);
            let mut payload = Bytes::new();
            let mut key = None;
            let mut headers = Headers::new();
            for (field, v) in pairs(parts.get(1)?) {
                let bytes = match v {
                    Value::BulkString(b) => Bytes::copy_from_slice(b),
                    other => Bytes::from(text(other)),
                };
                match field.as_str() {
                    "payload" => payload = bytes,
                    "key" => key = Some(bytes),
                    f => {
                        let name = f.strip_prefix("h:").unwrap_or(f).to_string();
                        headers.insert(name, String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
            headers.insert("redis-id".into(), id.clone());
            let ms: i64 = id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            let extra = MessageExtra::pack(key, None, headers);
            let message = Message::new(
                topic.clone(),
                0,
                seq_of(&id),
                Timestamp::from_micros(ms * 1000),
                topic.clone(),
                extra,
                payload,
            );
            Some((id, message))
        })
        .collect()
}

/// Translates our patterns for PSUBSCRIBE: `glob:` passes through; token patterns become globs where the
/// meaning is kept, and are refused where a Redis glob would match more than the pattern means.
pub fn redis_glob(p: &Pattern) -> Result<(bool, String), BrokerError> {
    let text = p.as_str();
    if let Some(glob) = text.strip_prefix("glob:") {
        return Ok((true, glob.to_string()));
    }
    if p.is_literal() {
        return Ok((false, text.to_string()));
    }
    if text == "#" || text == ">" {
        return Ok((true, "*".into()));
    }
    if let Some(prefix) = text.strip_suffix(".>").filter(|pre| !pre.contains(['*', '>', '#'])) {
        return Ok((true, format!("{prefix}.?*")));
    }
    if let Some(prefix) = text.strip_suffix(".#").filter(|pre| !pre.contains(['*', '>', '#'])) {
        // Zero or more tokens: the prefix itself is subscribed separately by the caller.
        return Ok((true, format!("{prefix}*")));
    }
    Err(BrokerError::Pattern(format!(
        "pattern \"{text}\" cannot be expressed in Redis: a Redis glob `*` also matches across `.`; use a trailing `.>`, or a glob: pattern such as glob:{}",
        text.replace(['>', '#'], "*")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_map_to_ordered_seqs_and_back() {
        assert_eq!(seq_of("1700000000123-4"), 1_700_000_000_123_004);
        assert_eq!(id_of(1_700_000_000_123_004), "1700000000123-4");
        assert!(seq_of("5-0") < seq_of("5-1") && seq_of("5-999") < seq_of("6-0"));
    }

    #[test]
    fn token_patterns_translate_to_globs_or_are_refused() {
        let glob = |t: &str| redis_glob(&Pattern::parse(t).unwrap());
        assert_eq!(glob("orders").unwrap(), (false, "orders".into()));
        assert_eq!(glob("orders.>").unwrap(), (true, "orders.?*".into()));
        assert_eq!(glob("#").unwrap(), (true, "*".into()));
        assert_eq!(glob("glob:user:*").unwrap(), (true, "user:*".into()));
        let err = glob("orders.*.eu").unwrap_err().to_string();
        assert!(err.contains("glob:orders.*.eu"), "{err}");
    }
}
