//! Positions in a topic: where a subscription starts, where `seek` moves it, where `browse` reads from,
//! and the position syntax users type (`start`, `end`, a seq, a time, `-5m`).

use std::time::Duration;

use super::clock::Timestamp;
use super::config::StartPosition;

/// Where `seek` moves a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    /// The oldest retained message.
    Start,
    /// After the newest message: only new ones follow.
    End,
    /// A seq in a partition; on a topic of several partitions only that partition moves.
    Seq {
        /// Partition.
        partition: u32,
        /// The first seq to deliver again.
        seq: u64,
    },
    /// The same seq in every partition (a plain seq typed on the command line).
    Each(u64),
    /// The first message published at or after this time.
    Time(Timestamp),
}

/// Where `browse` starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowseFrom {
    /// From this seq of partition 0 (clamped to the oldest retained).
    Seq(u64),
    /// From this position of one partition.
    At {
        /// Partition.
        partition: u32,
        /// Position in it.
        seq: u64,
    },
    /// From the first message at or after this time.
    Time(Timestamp),
    /// The newest `n` messages.
    Last(u64),
}

impl BrowseFrom {
    /// The same place for a topic of one partition (`At` partition 0 is `Seq`); `Err(partition)` when it
    /// names another partition, which such a topic does not have.
    pub fn in_one_partition(self) -> Result<BrowseFrom, u32> {
        match self {
            BrowseFrom::At { partition: 0, seq } => Ok(BrowseFrom::Seq(seq)),
            BrowseFrom::At { partition, .. } => Err(partition),
            other => Ok(other),
        }
    }
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// At most this many messages.
    pub max_msgs: usize,
    /// At most this many bytes (one message is always allowed); `u64::MAX` for no limit.
    pub max_bytes: u64,
    /// How long to wait for the first message; `None` returns at once.
    pub wait: Option<Duration>,
    /// Sets this consumer's prefetch (most messages it may hold unacked); `None` keeps it (initially the
    /// subscription's `max_in_flight`).
    pub prefetch: Option<u32>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { max_msgs: 100, max_bytes: u64::MAX, wait: None, prefetch: None }
    }
}

/// A position in a topic as users write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest retained message.
    Start,
    /// After the newest: only new ones.
    End,
    /// A seq.
    Seq(u64),
    /// A seq in one partition (`P:SEQ`): reading starts there and covers only that partition.
    At {
        /// Partition.
        partition: u32,
        /// Seq in it.
        seq: u64,
    },
    /// A publish time.
    Time(Timestamp),
}

impl Position {
    /// Parses `start`, `end`, a seq number, `PARTITION:SEQ`, an RFC 3339 time, or `-DURATION` (that
    /// long ago).
    pub fn parse(text: &str, now: Timestamp) -> Result<Position, String> {
        let t = text.trim();
        match t {
            "start" | "beginning" | "all" | "first" => return Ok(Position::Start),
            "end" | "new" | "now" => return Ok(Position::End),
            _ => {}
        }
        if let Ok(seq) = t.parse::<u64>() {
            return Ok(Position::Seq(seq));
        }
        if let Some((p, n)) = t.split_once(':')
            && let (Ok(partition), Ok(seq)) = (p.parse::<u32>(), n.parse::<u64>())
        {
            return Ok(Position::At { partition, seq });
        }
        if let Some(ago) = t.strip_prefix('-') {
            let d = humantime::parse_duration(ago).map_err(|e| format!("\"{t}\": {e}"))?;
            return Ok(Position::Time(now.minus(d)));
        }
        Timestamp::parse_rfc3339(t).map(Position::Time).map_err(|_| {
            format!(
                "\"{t}\" is not a position: use start, end, a seq number, PARTITION:SEQ, an RFC 3339 time, or -5m"
            )
        })
    }

    /// Where a subscription starting here begins (in the partition [`Position::partition`] names, for
    /// `P:SEQ`).
    pub fn start(self) -> StartPosition {
        match self {
            Position::Start => StartPosition::All,
            Position::End => StartPosition::New,
            Position::Seq(s) | Position::At { seq: s, .. } => StartPosition::Seq(s),
            Position::Time(t) => StartPosition::Time(t),
        }
    }

    /// The one partition a `P:SEQ` position reads.
    pub fn partition(self) -> Option<u32> {
        match self {
            Position::At { partition, .. } => Some(partition),
            _ => None,
        }
    }

    /// Where a seek to here moves a subscription.
    pub fn seek(self) -> SeekTarget {
        match self {
            Position::Start => SeekTarget::Start,
            Position::End => SeekTarget::End,
            Position::Seq(seq) => SeekTarget::Each(seq),
            Position::At { partition, seq } => SeekTarget::Seq { partition, seq },
            Position::Time(t) => SeekTarget::Time(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_micros(1_780_000_000_000_000);

    #[test]
    fn positions_parse_every_form() {
        assert_eq!(Position::parse("start", NOW), Ok(Position::Start));
        assert_eq!(Position::parse("end", NOW), Ok(Position::End));
        assert_eq!(Position::parse("42", NOW), Ok(Position::Seq(42)));
        assert_eq!(Position::parse("-5m", NOW), Ok(Position::Time(NOW.minus(Duration::from_secs(300)))));
        assert_eq!(
            Position::parse("2026-05-28T20:26:40Z", NOW),
            Ok(Position::Time(Timestamp::from_micros(1_780_000_000_000_000)))
        );
        assert_eq!(Position::parse("2:41", NOW), Ok(Position::At { partition: 2, seq: 41 }));
        assert_eq!(Position::parse("2:41", NOW).unwrap().start(), StartPosition::Seq(41));
        assert_eq!(Position::parse("2:41", NOW).unwrap().seek(), SeekTarget::Seq { partition: 2, seq: 41 });
        assert!(Position::parse("yesterday", NOW).unwrap_err().contains("-5m"));
        assert!(Position::parse("2:x", NOW).unwrap_err().contains("PARTITION:SEQ"));
    }

    #[test]
    fn browsing_a_partition_of_a_one_partition_topic() {
        assert_eq!(BrowseFrom::At { partition: 0, seq: 7 }.in_one_partition(), Ok(BrowseFrom::Seq(7)));
        assert_eq!(BrowseFrom::At { partition: 2, seq: 7 }.in_one_partition(), Err(2));
        assert_eq!(BrowseFrom::Last(3).in_one_partition(), Ok(BrowseFrom::Last(3)));
    }
}
