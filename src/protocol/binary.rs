//! Binary frames for the hot paths, offered in `hello` (`"binary": true`) and accepted in `welcome`:
//! publish batches (client → server), their receipts and deliveries (server → client). Everything else
//! stays JSON. docs/PROTOCOL.md ("Binary frames") is the specification.
//!
//! All integers are big-endian. A frame starts with its kind byte. Strings are UTF-8 with a u16 length,
//! byte strings (payload, key, header values) have a u32 length.

use std::sync::Arc;

use bytes::Bytes;

use super::ProtocolError;
use crate::model::{AckToken, BrokerDelivery};
use crate::model::{Headers, Message, MessageExtra, Name, PublishReceipt, PublishRequest, Timestamp};

/// `publish_batch`: id, count, then each message.
pub const PUBLISH_BATCH: u8 = 1;
/// The receipts of a binary `publish_batch`: id, count, then each receipt.
pub const RECEIPTS: u8 = 2;
/// `deliver`: sid, subscription (empty when none), count, then each delivery.
pub const DELIVER: u8 = 3;
/// `settle` (client → server): acks or nacks of one subscription, each with its own request id.
pub const SETTLE: u8 = 4;
/// The answer to a binary `settle`: one outcome per request id.
pub const SETTLED: u8 = 5;
/// `credit` (client → server): room for more deliveries on a stream; no answer.
pub const CREDIT: u8 = 6;

/// Marks a nack without a delay of its own (the subscription's backoff applies).
const NO_DELAY: u64 = u64::MAX;

const HAS_KEY: u8 = 1;
const HAS_MSG_ID: u8 = 2;
const HAS_HEADERS: u8 = 4;
/// A published message names its partition (`pub --partition`): a u32 follows its headers.
const HAS_PARTITION: u8 = 8;
const HAS_LEASE: u8 = 8;
const HAS_ATTEMPT: u8 = 16;
const SUBJECT_IS_TOPIC: u8 = 32;

/// Appends big-endian fields to a buffer.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A string of at most 65,535 bytes (names and msg ids are far shorter; longer ones are cut).
    fn str(&mut self, s: &str) {
        let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(&b[..b.len().min(u32::MAX as usize)]);
    }
    fn headers(&mut self, headers: &Headers) {
        self.u16(u16::try_from(headers.len()).unwrap_or(u16::MAX));
        for (k, v) in headers.iter().take(usize::from(u16::MAX)) {
            self.str(k);
            self.bytes(v.as_bytes());
        }
    }
    fn extra(&mut self, key: Option<&Bytes>, msg_id: Option<&str>, headers: &Headers) {
        if let Some(k) = key {
            self.bytes(k);
        }
        if let Some(id) = msg_id {
            self.str(id);
        }
        if !headers.is_empty() {
            self.headers(headers);
        }
    }
}

fn flags(key: Option<&Bytes>, msg_id: Option<&str>, headers: &Headers) -> u8 {
    let mut f = 0;
    if key.is_some() {
        f |= HAS_KEY;
    }
    if msg_id.is_some() {
        f |= HAS_MSG_ID;
    }
    if !headers.is_empty() {
        f |= HAS_HEADERS;
    }
    f
}

/// Reads big-endian fields, refusing a frame that ends early.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

fn short() -> ProtocolError {
    ProtocolError::Frame("binary frame ends in the middle of a field".into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(short)?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        self.take(N)?.try_into().map_err(|_| short())
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str, ProtocolError> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| ProtocolError::Field("a name or id is not UTF-8".into()))
    }
    /// A byte string shared with the frame (no copy).
    fn bytes(&mut self) -> Result<Bytes, ProtocolError> {
        let n = self.u32()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }
    /// A count of items that each take at least `least` bytes; one the frame cannot hold is refused
    /// before anything is allocated for it.
    fn count(&mut self, least: usize, what: &str) -> Result<usize, ProtocolError> {
        let count = self.u32()? as usize;
        if count > self.buf.len() / least {
            return Err(ProtocolError::Frame(format!("a count of {count} {what} does not fit the frame")));
        }
        Ok(count)
    }
    fn headers(&mut self) -> Result<Headers, ProtocolError> {
        let n = self.u16()?;
        let mut headers = Headers::new();
        for _ in 0..n {
            let k = self.str()?.to_string();
            let v = String::from_utf8(self.bytes()?.to_vec())
                .map_err(|_| ProtocolError::Field(format!("header \"{k}\" is not UTF-8")))?;
            headers.insert(k, v);
        }
        Ok(headers)
    }
    fn done(&self) -> Result<(), ProtocolError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(ProtocolError::Frame(format!(
                "{} unexpected bytes after the last field",
                self.buf.len() - self.pos
            )))
        }
    }
}

/// Validates names, reusing the previous one when the same bytes come again (a batch usually names
/// one topic throughout).
#[derive(Default)]
struct Names {
    last: Option<Name>,
}

impl Names {
    fn get(&mut self, text: &str, system: bool) -> Result<Name, ProtocolError> {
        if let Some(name) = &self.last
            && name.as_str() == text
        {
            return Ok(name.clone());
        }
        let name = if system { Name::system(text) } else { Name::new(text) };
        let name = name.map_err(|e| ProtocolError::Field(e.to_string()))?;
        self.last = Some(name.clone());
        Ok(name)
    }
}

/// Bytes of a `publish_batch` frame before its messages.
const PUBLISH_BATCH_HEAD: usize = 13;

/// At least the bytes one message takes in a `publish_batch` frame.
fn publish_size(m: &PublishRequest) -> usize {
    // subject length 2, flags 1, payload length 4, key length 4, msg_id length 2, header count 2, and
    // per header its key length 2 and value length 4.
    15 + m.subject.as_str().len() + m.size() + m.msg_id.as_deref().map_or(0, str::len) + 6 * m.headers.len()
}

/// Splits a batch into runs that each fit one `publish_batch` frame of at most `max_frame` bytes; a
/// message too large for any frame travels alone (and the server refuses it with a clear error).
pub fn publish_chunks(msgs: &[PublishRequest], max_frame: usize) -> Vec<&[PublishRequest]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, PUBLISH_BATCH_HEAD);
    for (i, m) in msgs.iter().enumerate() {
        let n = publish_size(m);
        if i > start && size + n > max_frame {
            chunks.push(&msgs[start..i]);
            (start, size) = (i, PUBLISH_BATCH_HEAD);
        }
        size += n;
    }
    if start < msgs.len() {
        chunks.push(&msgs[start..]);
    }
    chunks
}

/// A binary `publish_batch` frame.
pub fn encode_publish_batch(id: u64, msgs: &[PublishRequest]) -> Vec<u8> {
    let size: usize = msgs.iter().map(publish_size).sum();
    let mut w = Writer(Vec::with_capacity(PUBLISH_BATCH_HEAD + size));
    w.u8(PUBLISH_BATCH);
    w.u64(id);
    w.u32(u32::try_from(msgs.len()).unwrap_or(u32::MAX));
    for m in msgs {
        w.str(m.subject.as_str());
        let partition = if m.options.partition.is_some() { HAS_PARTITION } else { 0 };
        w.u8(flags(m.key.as_ref(), m.msg_id.as_deref(), &m.headers) | partition);
        w.extra(m.key.as_ref(), m.msg_id.as_deref(), &m.headers);
        if let Some(p) = m.options.partition {
            w.u32(p);
        }
        w.bytes(&m.payload);
    }
    w.0
}

/// The id of a client's binary frame, for answering one that cannot be decoded: every frame a client
/// sends starts with its kind byte and a u64 id, so the id can be read even from a frame of a kind this
/// server does not know, when the frame is long enough to hold one.
pub fn frame_id(buf: &[u8]) -> Option<u64> {
    buf.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// Decodes a binary `publish_batch` frame into its id and messages.
pub fn decode_publish_batch(buf: &Bytes) -> Result<(u64, Vec<PublishRequest>), ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    match r.u8()? {
        PUBLISH_BATCH => {}
        other => {
            return Err(ProtocolError::Frame(format!("binary frame kind {other} is not one a client sends")));
        }
    }
    let id = r.u64()?;
    let count = r.count(7, "messages")?;
    let mut names = Names::default();
    let mut msgs = Vec::with_capacity(count);
    for i in 0..count {
        let at = |e: ProtocolError| ProtocolError::Field(format!("message {i}: {e}"));
        let subject = names.get(r.str()?, false).map_err(at)?;
        let f = r.u8()?;
        let key = if f & HAS_KEY != 0 { Some(r.bytes()?) } else { None };
        let msg_id = if f & HAS_MSG_ID != 0 { Some(r.str()?.to_string()) } else { None };
        let headers = if f & HAS_HEADERS != 0 { r.headers().map_err(at)? } else { Headers::new() };
        let partition = if f & HAS_PARTITION != 0 { Some(r.u32()?) } else { None };
        let payload = r.bytes()?;
        let options = crate::model::PublishOptions { partition, ..Default::default() };
        msgs.push(PublishRequest { subject, key, msg_id, headers, payload, options });
    }
    r.done()?;
    Ok((id, msgs))
}

/// A binary receipts frame.
pub fn encode_receipts(id: u64, receipts: &[PublishReceipt]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(13 + receipts.len() * 40));
    w.u8(RECEIPTS);
    w.u64(id);
    w.u32(u32::try_from(receipts.len()).unwrap_or(u32::MAX));
    for r in receipts {
        w.str(r.topic.as_ref().map_or("", Name::as_str));
        w.u32(r.partition);
        w.u64(r.seq);
        w.u32(r.taps);
        w.u8(u8::from(r.duplicate));
    }
    w.0
}

/// Decodes a binary receipts frame into its id and receipts.
pub fn decode_receipts(buf: &Bytes) -> Result<(u64, Vec<PublishReceipt>), ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != RECEIPTS {
        return Err(ProtocolError::Frame("not a receipts frame".into()));
    }
    let id = r.u64()?;
    let count = r.count(19, "receipts")?;
    let mut names = Names::default();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = match r.str()? {
            "" => None,
            t => Some(names.get(t, true)?),
        };
        out.push(PublishReceipt {
            topic,
            partition: r.u32()?,
            seq: r.u64()?,
            taps: r.u32()?,
            duplicate: r.u8()? != 0,
            unrouted: false,
        });
    }
    r.done()?;
    Ok((id, out))
}

/// A binary `deliver` frame for a run of deliveries of one stream.
pub fn encode_deliver(sid: u64, subscription: Option<&Name>, deliveries: &[BrokerDelivery]) -> Vec<u8> {
    let size: usize = deliveries.iter().map(|d| 64 + d.message.topic.as_str().len() + d.message.size()).sum();
    let mut w = Writer(Vec::with_capacity(16 + size));
    w.u8(DELIVER);
    w.u64(sid);
    w.str(subscription.map_or("", Name::as_str));
    w.u32(u32::try_from(deliveries.len()).unwrap_or(u32::MAX));
    for d in deliveries {
        let m = &d.message;
        let mut f = flags(m.key(), m.msg_id(), m.headers());
        if d.token.is_some() {
            f |= HAS_LEASE;
        }
        if d.attempt.is_some() {
            f |= HAS_ATTEMPT;
        }
        if m.subject() == &m.topic {
            f |= SUBJECT_IS_TOPIC;
        }
        w.u8(f);
        w.str(m.topic.as_str());
        if f & SUBJECT_IS_TOPIC == 0 {
            w.str(m.subject().as_str());
        }
        w.u32(m.partition);
        w.u64(m.seq);
        w.i64(m.publish_time.as_micros());
        if let Some(a) = d.attempt {
            w.u32(a);
        }
        if let Some(t) = &d.token {
            w.u64(t.lease);
            w.i64(d.deadline.map_or(0, Timestamp::as_micros));
        }
        w.extra(m.key(), m.msg_id(), m.headers());
        w.bytes(&m.payload);
    }
    w.0
}

/// Decodes a binary `deliver` frame into its sid and deliveries (with ack tokens when they carry leases).
pub fn decode_deliver(buf: &Bytes) -> Result<(u64, Vec<BrokerDelivery>), ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != DELIVER {
        return Err(ProtocolError::Frame("not a deliver frame".into()));
    }
    let sid = r.u64()?;
    let subscription = match r.str()? {
        "" => None,
        s => Some(Name::system(s).map_err(|e| ProtocolError::Field(e.to_string()))?),
    };
    let count = r.count(30, "deliveries")?;
    let (mut topics, mut subjects) = (Names::default(), Names::default());
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let f = r.u8()?;
        let topic = topics.get(r.str()?, true)?;
        let subject = if f & SUBJECT_IS_TOPIC != 0 { topic.clone() } else { subjects.get(r.str()?, true)? };
        let partition = r.u32()?;
        let seq = r.u64()?;
        let published = Timestamp::from_micros(r.i64()?);
        let attempt = if f & HAS_ATTEMPT != 0 { Some(r.u32()?) } else { None };
        let lease = if f & HAS_LEASE != 0 { Some((r.u64()?, r.i64()?)) } else { None };
        let key = if f & HAS_KEY != 0 { Some(r.bytes()?) } else { None };
        let msg_id = if f & HAS_MSG_ID != 0 { Some(r.str()?.to_string()) } else { None };
        let headers = if f & HAS_HEADERS != 0 { r.headers()? } else { Headers::new() };
        let payload = r.bytes()?;
        let extra: Option<Arc<MessageExtra>> = MessageExtra::pack(key, msg_id, headers);
        let message = Message::new(topic, partition, seq, published, subject, extra, payload);
        let (token, deadline) = match (lease, &subscription) {
            (Some((lease, deadline)), Some(sub)) => (
                Some(AckToken { subscription: sub.clone(), partition, seq, lease, reply: None }),
                Some(Timestamp::from_micros(deadline)),
            ),
            _ => (None, None),
        };
        out.push(BrokerDelivery { message, attempt, deadline, token });
    }
    r.done()?;
    Ok((sid, out))
}

/// How a `settle` frame settles its leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOp {
    /// Done with them.
    Ack,
    /// Give them back for redelivery.
    Nack,
}

/// One lease a `settle` frame settles, with the request id its outcome is answered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleItem {
    /// The request id.
    pub id: u64,
    /// The delivery's partition.
    pub partition: u32,
    /// The delivery's seq.
    pub seq: u64,
    /// The lease being settled.
    pub lease: u64,
    /// For a nack: redelivery delay in milliseconds; `None` uses the subscription's backoff.
    pub delay_ms: Option<u64>,
}

/// Bytes of one item in a `settle` frame: id 8, partition 4, seq 8, lease 8, and for a nack delay 8.
fn settle_item_size(op: SettleOp) -> usize {
    match op {
        SettleOp::Ack => 28,
        SettleOp::Nack => 36,
    }
}

/// How many items of `op` fit one `settle` frame of at most `max_frame` bytes (at least one).
pub fn settle_capacity(op: SettleOp, subscription: &Name, max_frame: usize) -> usize {
    let head = 1 + 8 + 1 + 2 + subscription.as_str().len() + 4;
    (max_frame.saturating_sub(head) / settle_item_size(op)).max(1)
}

/// A binary `settle` frame: the frame id (the first item's, so that an error about the frame reaches
/// a waiting request), the op, the subscription, the count, then each item.
pub fn encode_settle(op: SettleOp, subscription: &Name, items: &[SettleItem]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(16 + subscription.as_str().len() + items.len() * 36));
    w.u8(SETTLE);
    w.u64(items.first().map_or(0, |i| i.id));
    w.u8(match op {
        SettleOp::Ack => 0,
        SettleOp::Nack => 1,
    });
    w.str(subscription.as_str());
    w.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
    for item in items {
        w.u64(item.id);
        w.u32(item.partition);
        w.u64(item.seq);
        w.u64(item.lease);
        if op == SettleOp::Nack {
            w.u64(item.delay_ms.unwrap_or(NO_DELAY));
        }
    }
    w.0
}

/// Decodes a binary `settle` frame.
pub fn decode_settle(buf: &Bytes) -> Result<(SettleOp, Name, Vec<SettleItem>), ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != SETTLE {
        return Err(ProtocolError::Frame("not a settle frame".into()));
    }
    r.u64()?;
    let op = match r.u8()? {
        0 => SettleOp::Ack,
        1 => SettleOp::Nack,
        other => return Err(ProtocolError::Field(format!("settle op {other} is not 0 (ack) or 1 (nack)"))),
    };
    let subscription = Name::system(r.str()?).map_err(|e| ProtocolError::Field(e.to_string()))?;
    let count = r.count(settle_item_size(op), "leases")?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, partition, seq, lease) = (r.u64()?, r.u32()?, r.u64()?, r.u64()?);
        let delay_ms = match op {
            SettleOp::Ack => None,
            SettleOp::Nack => Some(r.u64()?).filter(|d| *d != NO_DELAY),
        };
        items.push(SettleItem { id, partition, seq, lease, delay_ms });
    }
    r.done()?;
    Ok((op, subscription, items))
}

/// How one settle went: done, or an error code and message.
pub type SettleResult = Result<(), (u16, String)>;

/// One request's outcome in a `settled` frame.
pub type SettleOutcome = (u64, SettleResult);

/// A binary `settled` frame: the count, then per request its id, a code (0 when done) and a message
/// (empty when done).
pub fn encode_settled(outcomes: &[SettleOutcome]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(5 + outcomes.len() * 12));
    w.u8(SETTLED);
    w.u32(u32::try_from(outcomes.len()).unwrap_or(u32::MAX));
    for (id, outcome) in outcomes {
        w.u64(*id);
        match outcome {
            Ok(()) => {
                w.u16(0);
                w.str("");
            }
            Err((code, message)) => {
                w.u16(*code);
                w.str(message);
            }
        }
    }
    w.0
}

/// Decodes a binary `settled` frame.
pub fn decode_settled(buf: &Bytes) -> Result<Vec<SettleOutcome>, ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != SETTLED {
        return Err(ProtocolError::Frame("not a settled frame".into()));
    }
    let count = r.count(12, "outcomes")?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.u64()?;
        let code = r.u16()?;
        let message = r.str()?;
        out.push((id, if code == 0 { Ok(()) } else { Err((code, message.to_string())) }));
    }
    r.done()?;
    Ok(out)
}

/// A binary `credit` frame: id (0: no answer wanted), sid, n.
pub fn encode_credit(sid: u64, n: u64) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(25));
    w.u8(CREDIT);
    w.u64(0);
    w.u64(sid);
    w.u64(n);
    w.0
}

/// Decodes a binary `credit` frame into its id (`None` for 0), sid and n.
pub fn decode_credit(buf: &Bytes) -> Result<(Option<u64>, u64, u64), ProtocolError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != CREDIT {
        return Err(ProtocolError::Frame("not a credit frame".into()));
    }
    let id = Some(r.u64()?).filter(|id| *id != 0);
    let (sid, n) = (r.u64()?, r.u64()?);
    r.done()?;
    Ok((id, sid, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::system(s).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn publish_batches_round_trip_with_every_optional_part() {
        let msgs = vec![
            PublishRequest::new(name("orders.eu"), Bytes::from_static(b"\x00\xffbinary")),
            PublishRequest::new(name("orders.eu"), "plain")
                .with_key(Bytes::from_static(b"k\x01"))
                .with_msg_id("id-1")
                .with_header("trace", "t-9")
                .with_header("empty", ""),
            PublishRequest::new(name("orders.us"), ""),
        ];
        let frame = Bytes::from(encode_publish_batch(42, &msgs));
        assert_eq!(frame_id(&frame), Some(42));
        assert_eq!(decode_publish_batch(&frame).ok(), Some((42, msgs)));
    }

    #[test]
    fn batches_split_into_frames_that_fit_and_every_size_bound_holds() {
        let msgs: Vec<PublishRequest> = (0..100)
            .map(|i| {
                PublishRequest::new(name("orders.eu"), vec![b'x'; 1000 + i])
                    .with_msg_id(format!("id-{i}"))
                    .with_header("trace", "t")
            })
            .collect();
        for m in &msgs {
            let alone = encode_publish_batch(1, std::slice::from_ref(m)).len();
            assert!(PUBLISH_BATCH_HEAD + publish_size(m) >= alone, "the bound holds");
        }
        let chunks = publish_chunks(&msgs, 10_000);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 100, "nothing lost or repeated");
        for chunk in &chunks {
            assert!(encode_publish_batch(1, chunk).len() <= 10_000);
        }
        let joined: Vec<PublishRequest> = chunks.concat();
        assert_eq!(joined, msgs, "in order");
        // A message larger than any frame goes alone; an empty batch is no frame at all.
        let big =
            vec![PublishRequest::new(name("t"), vec![0; 50]), PublishRequest::new(name("t"), vec![0; 5000])];
        assert_eq!(publish_chunks(&big, 1000).iter().map(|c| c.len()).collect::<Vec<_>>(), [1, 1]);
        assert!(publish_chunks(&[], 1000).is_empty());
    }

    #[test]
    fn deliveries_round_trip_with_leases_attempts_and_subjects() {
        let plain =
            Message::new(name("t"), 0, 7, Timestamp::from_micros(123), name("t"), None, Bytes::from("a"));
        let extra = MessageExtra::pack(None, Some("m".into()), [("h".to_string(), "v".to_string())].into());
        let routed =
            Message::new(name("t"), 2, 8, Timestamp::from_micros(-5), name("t.x"), extra, Bytes::new());
        let sub = name("workers");
        let deliveries = vec![
            BrokerDelivery::untracked(plain),
            BrokerDelivery {
                message: routed,
                attempt: Some(3),
                deadline: Some(Timestamp::from_micros(999)),
                token: Some(AckToken {
                    subscription: sub.clone(),
                    partition: 2,
                    seq: 8,
                    lease: 77,
                    reply: None,
                }),
            },
        ];
        let frame = Bytes::from(encode_deliver(5, Some(&sub), &deliveries));
        assert_eq!(decode_deliver(&frame).ok(), Some((5, deliveries)));
        let receipts = vec![
            PublishReceipt {
                topic: Some(name("t")),
                partition: 0,
                seq: 9,
                taps: 1,
                duplicate: true,
                unrouted: false,
            },
            PublishReceipt::default(),
        ];
        let frame = Bytes::from(encode_receipts(6, &receipts));
        assert_eq!(decode_receipts(&frame).ok(), Some((6, receipts)));
    }

    #[test]
    fn malformed_frames_are_refused_not_trusted() {
        let msgs = vec![PublishRequest::new(name("a"), "payload")];
        let good = encode_publish_batch(1, &msgs);
        // Every truncation fails cleanly.
        for cut in 0..good.len() {
            assert!(decode_publish_batch(&Bytes::copy_from_slice(&good[..cut])).is_err(), "cut at {cut}");
        }
        // Trailing bytes, a huge count, an unknown kind, an invalid name and invalid UTF-8.
        let mut long = good.clone();
        long.push(0);
        assert!(decode_publish_batch(&Bytes::from(long)).is_err());
        let mut huge = good.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = decode_publish_batch(&Bytes::from(huge)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("does not fit"), "{err}");
        let mut kind = good.clone();
        kind[0] = 9;
        assert!(decode_publish_batch(&Bytes::from(kind)).is_err());
        let spaced = [PublishRequest::new(name("a"), "x")];
        let mut bad_name = encode_publish_batch(1, &spaced);
        bad_name[15] = b' ';
        let err =
            decode_publish_batch(&Bytes::from(bad_name)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("message 0"), "{err}");
        let mut not_utf8 = encode_publish_batch(1, &spaced);
        not_utf8[15] = 0xff;
        assert!(decode_publish_batch(&Bytes::from(not_utf8)).is_err());
    }

    #[test]
    fn settle_frames_round_trip_and_fit_their_capacity() {
        let sub = name("workers");
        let acks: Vec<SettleItem> = (0..3)
            .map(|i| SettleItem { id: 10 + i, partition: 0, seq: 100 + i, lease: 7 + i, delay_ms: None })
            .collect();
        let frame = Bytes::from(encode_settle(SettleOp::Ack, &sub, &acks));
        assert_eq!(frame_id(&frame), Some(10), "an error about the frame reaches its first request");
        assert_eq!(decode_settle(&frame).ok(), Some((SettleOp::Ack, sub.clone(), acks)));
        let nacks = vec![
            SettleItem { id: 1, partition: 2, seq: 3, lease: 4, delay_ms: Some(250) },
            SettleItem { id: 2, partition: 2, seq: 5, lease: 6, delay_ms: None },
        ];
        let frame = Bytes::from(encode_settle(SettleOp::Nack, &sub, &nacks));
        assert_eq!(decode_settle(&frame).ok(), Some((SettleOp::Nack, sub.clone(), nacks)));
        for op in [SettleOp::Ack, SettleOp::Nack] {
            let n = settle_capacity(op, &sub, 1000);
            let items = vec![SettleItem { id: 1, partition: 0, seq: 1, lease: 1, delay_ms: Some(1) }; n];
            assert!(encode_settle(op, &sub, &items).len() <= 1000);
            let one_more = vec![items[0].clone(); n + 1];
            assert!(encode_settle(op, &sub, &one_more).len() > 1000, "capacity is the most that fits");
        }
        let outcomes = vec![(10, Ok(())), (11, Err((404, "no lease 8 for seq 101".to_string())))];
        assert_eq!(decode_settled(&Bytes::from(encode_settled(&outcomes))).ok(), Some(outcomes));
        assert_eq!(decode_credit(&Bytes::from(encode_credit(3, 64))).ok(), Some((None, 3, 64)));
    }

    #[test]
    fn malformed_settle_frames_are_refused() {
        let sub = name("workers");
        let items = vec![SettleItem { id: 1, partition: 0, seq: 1, lease: 1, delay_ms: None }];
        let good = encode_settle(SettleOp::Ack, &sub, &items);
        for cut in 0..good.len() {
            assert!(decode_settle(&Bytes::copy_from_slice(&good[..cut])).is_err(), "cut at {cut}");
        }
        let mut op = good.clone();
        op[9] = 7;
        let err = decode_settle(&Bytes::from(op)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("settle op 7"), "{err}");
        let mut huge = good.clone();
        let count_at = 1 + 8 + 1 + 2 + "workers".len();
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_settle(&Bytes::from(huge)).is_err());
        let mut spaced = good.clone();
        spaced[12] = b' ';
        assert!(decode_settle(&Bytes::from(spaced)).is_err(), "an invalid name is refused");
        let credit = encode_credit(1, 2);
        assert!(decode_credit(&Bytes::copy_from_slice(&credit[..credit.len() - 1])).is_err());
    }
}
