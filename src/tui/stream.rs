//! The stream view's state: the ring of received messages, the field filter, the visible index kept up
//! to date as messages arrive, pause with a count of what arrived meanwhile, follow, and selection.

use std::collections::VecDeque;

use super::ring::{Entry, Ring};
use crate::model::{Message, Name, Pattern};

/// A field filter on the stream, e.g. `orders.* key=42 hdr.region=eu $.status=paid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// The text the user typed.
    pub text: String,
    subject: Option<Pattern>,
    key: Option<String>,
    headers: Vec<(String, String)>,
    json: Vec<(Vec<String>, Option<String>)>,
}

impl StreamFilter {
    /// Parses space-separated terms: a subject pattern, `key=V`, `hdr.NAME=V`, `$.a.b=V` or `$.a.b`.
    pub fn parse(text: &str) -> Result<StreamFilter, String> {
        let mut f = StreamFilter { text: text.trim().to_string(), ..StreamFilter::default() };
        for term in text.split_whitespace() {
            if let Some(v) = term.strip_prefix("key=") {
                f.key = Some(v.to_string());
            } else if let Some(rest) = term.strip_prefix("hdr.").or_else(|| term.strip_prefix("header.")) {
                let (k, v) = rest.split_once('=').ok_or_else(|| format!("\"{term}\": use hdr.NAME=VALUE"))?;
                f.headers.push((k.to_string(), v.to_string()));
            } else if let Some(rest) = term.strip_prefix("$.") {
                let (path, value) = match rest.split_once('=') {
                    Some((p, v)) => (p, Some(v.trim_matches('"').to_string())),
                    None => (rest, None),
                };
                f.json.push((path.split('.').map(str::to_string).collect(), value));
            } else {
                f.subject = Some(Pattern::parse(term).map_err(|e| e.to_string())?);
            }
        }
        Ok(f)
    }

    /// Whether a message passes.
    pub fn matches(&self, m: &Message) -> bool {
        if self.subject.as_ref().is_some_and(|p| !p.matches(m.subject().as_str())) {
            return false;
        }
        if let Some(key) = &self.key
            && m.key().is_none_or(|k| k.as_ref() != key.as_bytes())
        {
            return false;
        }
        if self.headers.iter().any(|(k, v)| m.headers().get(k) != Some(v)) {
            return false;
        }
        if !self.json.is_empty() {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&m.payload) else { return false };
            for (path, want) in &self.json {
                let found = path.iter().try_fold(&value, |v, step| v.get(step.as_str()));
                let ok = match (found, want) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(serde_json::Value::String(s)), Some(w)) => s == w,
                    (Some(other), Some(w)) => {
                        serde_json::from_str::<serde_json::Value>(w).is_ok_and(|v| v == *other)
                    }
                };
                if !ok {
                    return false;
                }
            }
        }
        true
    }
}

/// How the detail pane shows a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadView {
    /// Indented JSON when the payload is JSON, else text.
    #[default]
    Pretty,
    /// The bytes as text (lossy).
    Raw,
    /// A hex dump.
    Hex,
}

/// The stream's state.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Received messages.
    pub ring: Ring,
    /// Ingest numbers of the messages that pass the scope and filter, oldest first.
    visible: VecDeque<u64>,
    /// Ingest number of the ring's oldest entry.
    front: u64,
    /// Only this topic (set by opening a topic).
    pub scope: Option<Name>,
    /// Field filter.
    pub filter: StreamFilter,
    /// While paused: how many visible messages there were when pausing.
    pub paused_at: Option<usize>,
    /// Keep the newest selected.
    pub follow: bool,
    /// Selected position in `visible` (when not following).
    pub selected: usize,
    /// Detail pane open.
    pub detail: bool,
    /// Payload presentation in the detail pane.
    pub payload_view: PayloadView,
}

impl StreamState {
    /// An empty stream with the given caps.
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        StreamState {
            ring: Ring::new(max_count, max_bytes),
            visible: VecDeque::new(),
            front: 0,
            scope: None,
            filter: StreamFilter::default(),
            paused_at: None,
            follow: true,
            selected: 0,
            detail: false,
            payload_view: PayloadView::default(),
        }
    }

    fn passes(&self, m: &Message) -> bool {
        self.scope.as_ref().is_none_or(|t| m.topic == *t) && self.filter.matches(m)
    }

    /// Takes in a message.
    pub fn push(&mut self, message: Message) {
        let number = self.front + self.ring.len() as u64;
        let passes = self.passes(&message);
        let before = self.ring.dropped;
        self.ring.push(Entry::new(message));
        if passes {
            self.visible.push_back(number);
        }
        let evicted = self.ring.dropped - before;
        if evicted > 0 {
            self.front += evicted;
            let mut removed = 0;
            while self.visible.front().is_some_and(|n| *n < self.front) {
                self.visible.pop_front();
                removed += 1;
            }
            self.selected = self.selected.saturating_sub(removed);
            if let Some(at) = self.paused_at.as_mut() {
                *at = at.saturating_sub(removed);
            }
        }
    }

    /// Re-derives the visible list after the scope or filter changed.
    pub fn refilter(&mut self) {
        let front = self.front;
        self.visible = (0..self.ring.len())
            .filter(|&i| self.ring.get(i).is_some_and(|e| self.passes(&e.message)))
            .map(|i| front + i as u64)
            .collect();
        self.selected = self.selected.min(self.visible.len().saturating_sub(1));
    }

    /// How many messages pass the filter (up to the pause point while paused).
    pub fn shown_len(&self) -> usize {
        self.paused_at.unwrap_or(self.visible.len()).min(self.visible.len())
    }

    /// Messages that arrived since pausing.
    pub fn new_while_paused(&self) -> usize {
        self.paused_at.map_or(0, |at| self.visible.len().saturating_sub(at))
    }

    /// The visible entry at position `i`.
    pub fn entry(&self, i: usize) -> Option<&Entry> {
        let number = *self.visible.get(i)?;
        self.ring.get(usize::try_from(number - self.front).ok()?)
    }

    /// The selected position (the newest when following).
    pub fn selection(&self) -> Option<usize> {
        let len = self.shown_len();
        if len == 0 {
            None
        } else if self.follow {
            Some(len - 1)
        } else {
            Some(self.selected.min(len - 1))
        }
    }

    /// The selected entry.
    pub fn selected_entry(&self) -> Option<&Entry> {
        self.selection().and_then(|i| self.entry(i))
    }

    /// Moves the selection; moving stops following.
    pub fn move_by(&mut self, delta: i64) {
        let len = self.shown_len();
        if len == 0 {
            return;
        }
        let current = self.selection().unwrap_or(0) as i64;
        let next = (current + delta).clamp(0, len as i64 - 1);
        self.selected = usize::try_from(next).unwrap_or(0);
        self.follow = next == len as i64 - 1 && delta > 0 && self.follow;
    }

    /// Pause or resume the display.
    pub fn toggle_pause(&mut self) {
        self.paused_at = match self.paused_at {
            Some(_) => None,
            None => Some(self.visible.len()),
        };
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.front += self.ring.len() as u64;
        self.ring.clear();
        self.visible.clear();
        self.selected = 0;
        self.paused_at = self.paused_at.map(|_| 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Headers, MessageExtra, Timestamp};
    use bytes::Bytes;

    fn msg(subject: &str, seq: u64, payload: &str) -> Message {
        let mut headers = Headers::new();
        headers.insert("region".into(), if seq.is_multiple_of(2) { "eu" } else { "us" }.into());
        let topic = Name::new(subject.split('.').next().unwrap()).unwrap();
        Message::new(
            topic,
            0,
            seq,
            Timestamp::ZERO,
            Name::new(subject).unwrap(),
            MessageExtra::pack(Some(Bytes::from(seq.to_string())), None, headers),
            Bytes::from(payload.to_string()),
        )
    }

    #[test]
    fn field_filter_matches_subject_key_header_and_json() {
        let f = StreamFilter::parse("orders.* hdr.region=eu $.status=paid").unwrap();
        assert!(f.matches(&msg("orders.new", 2, r#"{"status":"paid"}"#)));
        assert!(!f.matches(&msg("orders.new", 1, r#"{"status":"paid"}"#)), "header differs");
        assert!(!f.matches(&msg("orders.new", 2, r#"{"status":"open"}"#)), "json differs");
        assert!(!f.matches(&msg("users.new", 2, r#"{"status":"paid"}"#)), "subject differs");
        assert!(StreamFilter::parse("key=4").unwrap().matches(&msg("a.b", 4, "x")));
        assert!(StreamFilter::parse("hdr.region").is_err());
    }

    #[test]
    fn pause_counts_new_messages_and_keeps_the_view() {
        let mut s = StreamState::new(100, usize::MAX);
        for i in 0..3 {
            s.push(msg("t.a", i, "x"));
        }
        s.toggle_pause();
        for i in 3..8 {
            s.push(msg("t.a", i, "x"));
        }
        assert_eq!((s.shown_len(), s.new_while_paused()), (3, 5));
        assert_eq!(s.selected_entry().map(|e| e.message.seq), Some(2));
        s.toggle_pause();
        assert_eq!(s.selected_entry().map(|e| e.message.seq), Some(7));
    }

    #[test]
    fn visible_index_survives_eviction_and_refilter() {
        let mut s = StreamState::new(5, usize::MAX);
        s.filter = StreamFilter::parse("hdr.region=eu").unwrap();
        for i in 0..20 {
            s.push(msg("t.a", i, "x"));
        }
        let shown: Vec<u64> = (0..s.shown_len()).filter_map(|i| s.entry(i)).map(|e| e.message.seq).collect();
        assert_eq!(shown, vec![16, 18]);
        s.filter = StreamFilter::default();
        s.refilter();
        assert_eq!(s.shown_len(), 5);
        assert_eq!(s.ring.dropped, 15);
    }

    #[test]
    fn moving_the_selection_stops_following() {
        let mut s = StreamState::new(100, usize::MAX);
        for i in 0..10 {
            s.push(msg("t.a", i, "x"));
        }
        s.move_by(-3);
        assert!(!s.follow);
        s.push(msg("t.a", 10, "x"));
        assert_eq!(s.selected_entry().map(|e| e.message.seq), Some(6));
    }
}
