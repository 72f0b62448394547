//! Delivery bookkeeping for a run: every message the simulated publishers sent (who, which number,
//! which key, when, to which subject) and what each subscription's consumers made of it. From this the
//! report tells, per subscription, what was delivered, lost, redelivered, handled twice, handled out of
//! order, and how late. It counts from the publishers' own numbering, so it means the same on every
//! broker, whatever the broker itself can report.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use super::progress::SubProgress;
use super::report::DeliveryCheck;
use crate::model::{Name, Pattern};

/// One message a simulated publisher sent.
struct Sent {
    publisher: usize,
    n: u64,
    key: Option<u32>,
    subject: Name,
    at: Duration,
}

/// What one subscription's consumers did with the messages.
struct SubTrack {
    name: String,
    /// Subjects its topic captures.
    captures: Vec<Pattern>,
    /// Its own subject filter (empty: all the topic has).
    filter: Vec<Pattern>,
    /// Deliveries per message.
    receipts: HashMap<usize, u32>,
    /// Times each message was handled to the end (acked, or taken without acks).
    completions: HashMap<usize, u32>,
    /// The highest number handled so far per (publisher, key).
    last_done: HashMap<(usize, Option<u32>), u64>,
    out_of_order: u64,
    max_lag: Duration,
    /// Messages the broker or client said it dropped before they reached the consumer.
    dropped: u64,
    /// Messages still held for the subscription when the run ended, found by the final drain.
    waiting: HashSet<usize>,
    /// The most of `waiting` that can be true, when the drain could not tell kept from given up.
    waiting_cap: Option<u64>,
    /// Messages a running consumer held, unfinished, when the run ended.
    in_hand: HashSet<usize>,
    /// A live subscription (the broker keeps nothing for it): what nobody heard is gone at once.
    listen_only: bool,
    /// Messages sent so far that it reads.
    expected: u64,
    /// Messages known to be gone while the run goes on: published while nobody listened to a live
    /// subscription, or held by a consumer of one when it crashed.
    gone: HashSet<usize>,
    /// The newest message a consumer received (a live stream delivers in publish order).
    newest: Option<usize>,
    /// Every message before this one is settled for the running count: received, gone, passed over,
    /// or not the subscription's.
    cursor: usize,
    /// Messages of a live subscription that a newer one overtook: nobody heard them, and nobody will.
    passed_over: u64,
}

impl SubTrack {
    /// Whether messages on `subject` are the subscription's.
    fn reads(&self, subject: &str) -> bool {
        self.captures.iter().any(|p| p.matches(subject))
            && (self.filter.is_empty() || self.filter.iter().any(|p| p.matches(subject)))
    }
}

/// The bookkeeping of one run.
#[derive(Default)]
pub struct Tracker {
    by_payload: HashMap<Bytes, usize>,
    sent: Vec<Sent>,
    subs: Vec<SubTrack>,
}

impl Tracker {
    /// Follows a subscription reading the subjects `captures` (its topic's) narrowed by `filter`.
    pub fn add_subscription(&mut self, name: &str, captures: Vec<Pattern>, filter: Vec<Pattern>) {
        self.subs.push(SubTrack {
            name: name.to_string(),
            captures,
            filter,
            receipts: HashMap::new(),
            completions: HashMap::new(),
            last_done: HashMap::new(),
            out_of_order: 0,
            max_lag: Duration::ZERO,
            dropped: 0,
            waiting: HashSet::new(),
            waiting_cap: None,
            in_hand: HashSet::new(),
            listen_only: false,
            expected: 0,
            gone: HashSet::new(),
            newest: None,
            cursor: self.sent.len(),
            passed_over: 0,
        });
    }

    /// `sub` is a live subscription: the broker keeps nothing for it, so what is published while nobody
    /// listens is gone (for the running count; the final one finds it out by itself).
    pub fn listen_only(&mut self, sub: &str) {
        if let Some(s) = self.sub(sub) {
            s.listen_only = true;
        }
    }

    /// The message just published went by `sub`, a live subscription, while nobody listened.
    pub fn unheard(&mut self, sub: &str) {
        let Some(last) = self.sent.len().checked_sub(1) else { return };
        let subject = self.sent[last].subject.clone();
        if let Some(s) = self.sub(sub)
            && s.reads(subject.as_str())
        {
            s.gone.insert(last);
        }
    }

    /// A consumer of `sub` crashed holding `msg`, and the broker will not deliver it again.
    pub fn gone(&mut self, sub: &str, msg: usize) {
        if let Some(s) = self.sub(sub) {
            s.gone.insert(msg);
        }
    }

    /// Publisher `publisher` sent its message number `n` at `at`. Payloads identify messages on the
    /// way back (every broker carries the payload unchanged), so the default payload, which names the
    /// publisher and the number, keeps them apart; a template without `{{seq}}` makes them ambiguous.
    pub fn published(
        &mut self,
        publisher: usize,
        n: u64,
        key: Option<u32>,
        subject: Name,
        payload: Bytes,
        at: Duration,
    ) {
        self.by_payload.insert(payload, self.sent.len());
        for s in self.subs.iter_mut().filter(|s| s.reads(subject.as_str())) {
            s.expected += 1;
        }
        self.sent.push(Sent { publisher, n, key, subject, at });
    }

    /// Which sent message `payload` is.
    pub fn identify(&self, payload: &[u8]) -> Option<usize> {
        self.by_payload.get(payload).copied()
    }

    fn sub(&mut self, name: &str) -> Option<&mut SubTrack> {
        self.subs.iter_mut().find(|s| s.name == name)
    }

    /// A consumer of `sub` received message `msg` at `at`.
    pub fn received(&mut self, sub: &str, msg: usize, at: Duration) {
        let Some(sent_at) = self.sent.get(msg).map(|s| s.at) else { return };
        let Some(s) = self.sub(sub) else { return };
        let count = s.receipts.entry(msg).or_insert(0);
        *count += 1;
        if *count == 1 {
            s.max_lag = s.max_lag.max(at.saturating_sub(sent_at));
        }
        s.newest = s.newest.max(Some(msg));
    }

    /// A consumer of `sub` finished message `msg` (acked it, or took it on a broker without acks).
    pub fn completed(&mut self, sub: &str, msg: usize) {
        let Some((publisher, n, key)) = self.sent.get(msg).map(|s| (s.publisher, s.n, s.key)) else { return };
        let Some(s) = self.sub(sub) else { return };
        let count = s.completions.entry(msg).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        let last = s.last_done.entry((publisher, key)).or_insert(0);
        if n < *last {
            s.out_of_order += 1;
        } else {
            *last = n;
        }
    }

    /// The broker or client dropped `n` messages of `sub` before they reached a consumer.
    pub fn dropped(&mut self, sub: &str, n: u64) {
        if let Some(s) = self.sub(sub) {
            s.dropped += n;
        }
    }

    /// The final drain found message `msg` still waiting for `sub`.
    pub fn waiting(&mut self, sub: &str, msg: usize) {
        let Some(subject) = self.sent.get(msg).map(|m| m.subject.clone()) else { return };
        if let Some(s) = self.sub(sub)
            && s.reads(subject.as_str())
        {
            s.waiting.insert(msg);
        }
    }

    /// At most `n` of what the drain found for `sub` is still kept for it (the broker's own backlog,
    /// where the drain read a log that also holds what was given up on).
    pub fn waiting_at_most(&mut self, sub: &str, n: u64) {
        if let Some(s) = self.sub(sub) {
            s.waiting_cap = Some(n);
        }
    }

    /// A running consumer of `sub` still held message `msg`, unfinished, at the end.
    pub fn in_hand(&mut self, sub: &str, msg: usize) {
        if let Some(s) = self.sub(sub) {
            s.in_hand.insert(msg);
        }
    }

    /// The outcome per subscription, in the order they were added.
    pub fn checks(&self) -> Vec<DeliveryCheck> {
        self.subs
            .iter()
            .map(|s| {
                let expected = self.sent.iter().filter(|m| s.reads(m.subject.as_str())).count() as u64;
                let delivered = s.receipts.len() as u64;
                let open = |m: &&usize| !s.completions.contains_key(*m);
                let in_hand: HashSet<usize> = s.in_hand.iter().filter(open).copied().collect();
                let kept = s.waiting.iter().filter(open).filter(|m| !in_hand.contains(*m)).count() as u64;
                let waiting = kept.min(s.waiting_cap.unwrap_or(u64::MAX)) + in_hand.len() as u64;
                let handled = s.completions.len() as u64;
                DeliveryCheck {
                    subscription: s.name.clone(),
                    expected,
                    delivered,
                    waiting,
                    lost: expected.saturating_sub(handled + waiting),
                    redelivered: s.receipts.values().map(|&n| u64::from(n.saturating_sub(1))).sum(),
                    duplicates: s.completions.values().filter(|&&n| n > 1).count() as u64,
                    out_of_order: s.out_of_order,
                    max_lag: s.max_lag,
                    dropped: s.dropped,
                }
            })
            .collect()
    }
}

impl Tracker {
    /// The counts so far per subscription, at `now` into the run (see [`SubProgress`] for what `lost`
    /// and `waiting` mean while it runs). Cheap to call often: each message is passed over once.
    pub fn progress(&mut self, now: Duration) -> Vec<SubProgress> {
        let sent = &self.sent;
        self.subs
            .iter_mut()
            .map(|s| {
                while let Some(m) = sent.get(s.cursor) {
                    let k = s.cursor;
                    if !s.reads(m.subject.as_str()) || s.receipts.contains_key(&k) || s.gone.contains(&k) {
                        s.cursor += 1;
                    } else if s.listen_only && s.newest.is_some_and(|n| n > k) {
                        s.passed_over += 1;
                        s.cursor += 1;
                    } else {
                        break;
                    }
                }
                let lag_now = sent.get(s.cursor).map_or(Duration::ZERO, |m| now.saturating_sub(m.at));
                let handled = s.completions.len() as u64;
                let gone = s.gone.iter().filter(|m| !s.completions.contains_key(*m)).count() as u64;
                let lost = s.passed_over + gone;
                let check = DeliveryCheck {
                    subscription: s.name.clone(),
                    expected: s.expected,
                    delivered: s.receipts.len() as u64,
                    waiting: s.expected.saturating_sub(handled + lost),
                    lost,
                    redelivered: s.receipts.values().map(|&n| u64::from(n.saturating_sub(1))).sum(),
                    duplicates: s.completions.values().filter(|&&n| n > 1).count() as u64,
                    out_of_order: s.out_of_order,
                    max_lag: s.max_lag,
                    dropped: s.dropped,
                };
                SubProgress { check, lag_now }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        let mut t = Tracker::default();
        t.add_subscription("all", vec![Pattern::parse("orders").unwrap()], Vec::new());
        for n in 1..=4 {
            let payload = Bytes::from(format!("m{n}"));
            t.published(0, n, Some(1), Name::new("orders").unwrap(), payload, Duration::from_millis(n * 100));
        }
        t
    }

    #[test]
    fn counts_from_the_publishers_numbering() {
        let mut t = tracker();
        let m = |n: u64| t.identify(format!("m{n}").as_bytes()).unwrap();
        let (one, two, three, four) = (m(1), m(2), m(3), m(4));
        t.received("all", two, Duration::from_millis(450));
        t.received("all", one, Duration::from_millis(500));
        t.completed("all", two);
        t.completed("all", one);
        t.received("all", one, Duration::from_millis(900));
        t.completed("all", one);
        t.waiting("all", three);
        t.waiting("all", one);
        let c = &t.checks()[0];
        assert_eq!((c.expected, c.delivered, c.waiting, c.lost), (4, 2, 1, 1));
        // Received but never finished, nor kept, nor in anyone's hands: lost too.
        t.received("all", four, Duration::from_millis(900));
        assert_eq!(t.checks()[0].lost, 1, "received is not handled");
        t.in_hand("all", four);
        assert_eq!((t.checks()[0].waiting, t.checks()[0].lost), (2, 0));
        t.waiting_at_most("all", 0);
        assert_eq!((t.checks()[0].waiting, t.checks()[0].lost), (1, 1));
        assert_eq!((c.redelivered, c.duplicates, c.out_of_order), (1, 1, 1));
        assert_eq!(c.max_lag, Duration::from_millis(400));
    }

    #[test]
    fn messages_outside_the_subscription_are_not_expected() {
        let mut t = tracker();
        t.add_subscription(
            "eu",
            vec![Pattern::parse("orders").unwrap()],
            vec![Pattern::parse("eu").unwrap()],
        );
        assert_eq!(t.checks()[1].expected, 0);
        assert!(t.identify(b"unknown").is_none());
    }

    #[test]
    fn the_running_count_knows_a_live_subscriptions_losses_as_they_happen() {
        let mut t = tracker();
        t.add_subscription("live", vec![Pattern::parse("orders").unwrap()], Vec::new());
        t.listen_only("live");
        // Sent before "live" was added: only messages sent from now on count for it.
        for n in 5..=8 {
            let payload = Bytes::from(format!("m{n}"));
            t.published(0, n, None, Name::new("orders").unwrap(), payload, Duration::from_millis(n * 100));
        }
        let m = |t: &Tracker, n: u64| t.identify(format!("m{n}").as_bytes()).unwrap();
        let (five, six, seven, eight) = (m(&t, 5), m(&t, 6), m(&t, 7), m(&t, 8));
        // The durable "all" received #5 only; the live one #5 and then #7: #6 went by unheard.
        t.received("all", five, Duration::from_millis(600));
        t.received("live", five, Duration::from_millis(600));
        t.received("live", seven, Duration::from_millis(800));
        t.completed("live", five);
        t.received("live", eight, Duration::from_millis(850));
        t.gone("live", eight);
        let now = Duration::from_millis(1000);
        let p = t.progress(now);
        let (all, live) = (&p[0], &p[1]);
        assert_eq!(all.check.expected, 8);
        assert_eq!((all.check.lost, all.check.waiting), (0, 8), "a durable subscription loses nothing yet");
        assert_eq!(all.lag_now, Duration::from_millis(900), "#1, sent at 100 ms, still waits");
        assert_eq!(live.check.expected, 4);
        assert_eq!((live.check.lost, live.check.waiting), (2, 1), "#6 unheard, #8 crashed; #7 in hand");
        assert_eq!(live.lag_now, Duration::ZERO, "it has heard everything it still can");
        t.received("all", six, Duration::from_millis(1000));
        assert_eq!(t.progress(now)[0].lag_now, Duration::from_millis(900), "#1 is still the oldest");
        // Published while nobody listened to the live one: gone at once, and nothing to wait for.
        t.published(0, 9, None, Name::new("orders").unwrap(), Bytes::from("m9"), now);
        t.unheard("live");
        let live = &t.progress(now + Duration::from_secs(1))[1];
        assert_eq!((live.check.lost, live.check.waiting, live.lag_now), (3, 1, Duration::ZERO));
    }
}
