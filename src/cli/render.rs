//! How messages look on stdout: `--format text|json|raw|TEMPLATE`, with colour decided once.

use std::io::IsTerminal;

use crate::model::Message;
use crate::protocol::envelope::{Envelope, encode_bytes, format_time};

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
            }
        }
    }
}

/// An output format for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One line per message for people: time, subject, seq, key, headers, payload.
    Text,
    /// One NDJSON envelope per message (lossless; `pub --json` reads it back).
    Json,
    /// The payload bytes, then a newline.
    Raw,
    /// A template with `{{field}}` placeholders.
    Template(String),
}

impl Format {
    /// Parses `--format`; anything other than the three names must contain a `{{field}}`.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "raw" => Ok(Format::Raw),
            t if t.contains("{{") => {
                check_template(t)?;
                Ok(Format::Template(t.to_string()))
            }
            other => Err(format!(
                "unknown format \"{other}\": use text, json, raw, or a template such as '{{{{subject}}}} {{{{payload}}}}'"
            )),
        }
    }
}

/// Turns messages into output bytes.
#[derive(Debug, Clone)]
pub struct Renderer {
    format: Format,
    color: bool,
    /// Control characters in message fields are shown escaped (text and template formats): the output
    /// goes to a terminal, where a payload's escape sequences would act on the terminal itself.
    escape: bool,
    /// Written after each message: a newline unless the user chose another (`-D`) or none (`-N`).
    delimiter: Vec<u8>,
    /// Positions are shown as `#PARTITION:SEQ` (the broker's topics have partitions), the form
    /// `--from` takes.
    partitions: bool,
}

const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

impl Renderer {
    /// A renderer for `format`, coloured when `color` (text only).
    pub fn new(format: Format, color: bool) -> Self {
        Renderer { format, color, escape: false, delimiter: vec![b'\n'], partitions: false }
    }

    /// Shows positions as `#PARTITION:SEQ` in the text format when `partitions` (topics of the broker
    /// have partitions, so a seq alone names no message).
    pub fn with_partitions(mut self, partitions: bool) -> Self {
        self.partitions = partitions;
        self
    }

    /// Ends each message with `delimiter` instead of a newline (empty: nothing, for byte-exact raw output).
    pub fn with_delimiter(mut self, delimiter: Vec<u8>) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Escapes control characters of message fields when `terminal` (stdout is a terminal) in the text
    /// and template formats; `raw`, `json` and anything piped stay byte-exact.
    pub fn to_terminal(mut self, terminal: bool) -> Self {
        self.escape = terminal;
        self
    }

    /// Appends one message's output (ending with the delimiter, a newline by default) to `out`.
    pub fn render(&self, m: &Message, attempt: Option<u32>, lease: Option<u64>, out: &mut Vec<u8>) {
        match &self.format {
            Format::Json => {
                let mut value = serde_json::to_value(Envelope::from_message(m, attempt)).unwrap_or_default();
                if let (Some(lease), Some(object)) = (lease, value.as_object_mut()) {
                    object.insert("lease".into(), lease.into());
                }
                out.extend_from_slice(value.to_string().as_bytes());
            }
            Format::Raw => out.extend_from_slice(&m.payload),
            Format::Text => self.text(m, attempt, lease, out),
            Format::Template(t) => {
                let text = expand_with(t, m, attempt, lease, self.escape);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out.extend_from_slice(&self.delimiter);
    }

    fn text(&self, m: &Message, attempt: Option<u32>, lease: Option<u64>, out: &mut Vec<u8>) {
        let time = format_time(m.publish_time);
        // HH:MM:SS.micro of the RFC 3339 time: what a person scanning a stream needs.
        let clock = time.get(11..26).unwrap_or(&time);
        let (dim, cyan, yellow, reset) =
            if self.color { (DIM, CYAN, YELLOW, RESET) } else { ("", "", "", "") };
        let shown = |text: &str| if self.escape { escape_controls(text) } else { text.to_string() };
        let position = if self.partitions { format!("{}:{}", m.partition, m.seq) } else { m.seq.to_string() };
        let mut line = format!(
            "{dim}{clock}{reset} {cyan}{}{reset} {dim}#{position}{reset}",
            shown(m.subject().as_str())
        );
        if let Some(key) = m.key() {
            line.push_str(&format!(" {yellow}key={}{reset}", shown(&encode_bytes(key).0)));
        }
        if attempt.is_some_and(|a| a > 1) {
            line.push_str(&format!(" {yellow}attempt={}{reset}", attempt.unwrap_or(0)));
        }
        if let Some(lease) = lease {
            line.push_str(&format!(" {dim}lease={lease}{reset}"));
        }
        for (k, v) in m.headers() {
            line.push_str(&format!(" {dim}{}={}{reset}", shown(k), shown(v)));
        }
        let (payload, encoding) = encode_bytes(&m.payload);
        line.push(' ');
        if encoding == crate::protocol::Encoding::Base64 {
            line.push_str("base64:");
        }
        line.push_str(&shown(&payload));
        out.extend_from_slice(line.as_bytes());
    }
}

/// The fields a template may name (besides `header.NAME`).
const FIELDS: &[&str] = &[
    "topic",
    "subject",
    "seq",
    "partition",
    "timestamp",
    "time",
    "key",
    "payload",
    "size",
    "attempt",
    "lease",
    "headers",
];

/// Refuses a template naming a field that does not exist or leaving a `{{` unclosed, so that a typo is
/// an error rather than literal braces in every line.
fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("the template \"{template}\" opens a `{{{{` it never closes"));
        };
        let field = rest[start + 2..start + end].trim();
        let known = FIELDS.contains(&field) || field.strip_prefix("header.").is_some_and(|n| !n.is_empty());
        if !known {
            return Err(format!(
                "unknown template field \"{field}\": use {}, or header.NAME",
                FIELDS.join(", ")
            ));
        }
        rest = &rest[start + end + 2..];
    }
    Ok(())
}

/// Expands `{{field}}` placeholders and `\n`/`\t` escapes of an output template.
pub fn expand(template: &str, m: &Message, attempt: Option<u32>, lease: Option<u64>) -> String {
    expand_with(template, m, attempt, lease, false)
}

/// [`expand`], with control characters of the fields escaped when `escape` (not the template's own).
fn expand_with(
    template: &str,
    m: &Message,
    attempt: Option<u32>,
    lease: Option<u64>,
    escape: bool,
) -> String {
    let text = template.replace("\\n", "\n").replace("\\t", "\t");
    let mut out = String::with_capacity(text.len() + m.payload.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let field = rest[start + 2..start + end].trim();
        let value = field_value(field, m, attempt, lease);
        out.push_str(&if escape { escape_controls(&value) } else { value });
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Shows control characters (C0 but tab, DEL, C1) as `\n`, `\r` or `\xHH`/`\u{HHHH}`, so that bytes
/// of a message cannot move the cursor, clear the screen or retitle the terminal that shows it.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn field_value(field: &str, m: &Message, attempt: Option<u32>, lease: Option<u64>) -> String {
    match field {
        "topic" => m.topic.to_string(),
        "subject" => m.subject().to_string(),
        "seq" => m.seq.to_string(),
        "partition" => m.partition.to_string(),
        "timestamp" | "time" => format_time(m.publish_time),
        "key" => m.key().map(|k| encode_bytes(k).0).unwrap_or_default(),
        "payload" => encode_bytes(&m.payload).0,
        "size" => m.payload.len().to_string(),
        "attempt" => attempt.map(|a| a.to_string()).unwrap_or_default(),
        "lease" => lease.map(|l| l.to_string()).unwrap_or_default(),
        "headers" => serde_json::to_string(m.headers()).unwrap_or_default(),
        other => match other.strip_prefix("header.") {
            Some(name) => m.headers().get(name).cloned().unwrap_or_default(),
            None => format!("{{{{{other}}}}}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Headers, MessageExtra, Name, Timestamp};
    use bytes::Bytes;

    fn message() -> Message {
        let mut headers = Headers::new();
        headers.insert("region".into(), "eu".into());
        Message::new(
            Name::new("orders").unwrap(),
            0,
            42,
            Timestamp::from_micros(1_780_000_000_123_456),
            Name::new("orders.eu").unwrap(),
            MessageExtra::pack(Some(Bytes::from_static(b"k1")), None, headers),
            Bytes::from_static(b"hello"),
        )
    }

    fn render(format: Format) -> String {
        let mut out = Vec::new();
        Renderer::new(format, false).render(&message(), Some(2), None, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates_with_unknown_fields_or_open_braces_are_refused() {
        assert!(Format::parse("{{subject}} {{header.region}} {{ payload }}").is_ok());
        let typo = Format::parse("{{paylod}}").err().unwrap_or_default();
        assert!(typo.contains("unknown template field \"paylod\"") && typo.contains("payload"), "{typo}");
        let open = Format::parse("{{subject} x").err().unwrap_or_default();
        assert!(open.contains("never closes"), "{open}");
        assert!(Format::parse("{{header.}}").is_err());
    }

    #[test]
    fn text_shows_time_subject_seq_key_attempt_headers_and_payload() {
        assert_eq!(render(Format::Text), "20:26:40.123456 orders.eu #42 key=k1 attempt=2 region=eu hello\n");
        let mut m = message();
        m.partition = 3;
        let mut out = Vec::new();
        Renderer::new(Format::Text, false).with_partitions(true).render(&m, None, None, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("20:26:40.123456 orders.eu #3:42 key=k1"), "{line}");
    }

    #[test]
    fn raw_is_the_payload_and_template_fills_fields() {
        assert_eq!(render(Format::Raw), "hello\n");
        let t = Format::parse("{{subject}}\\t{{seq}} {{header.region}} {{payload}} {{header.none}}").unwrap();
        assert_eq!(render(t), "orders.eu\t42 eu hello \n");
    }

    #[test]
    fn json_is_one_envelope_line() {
        let line = render(Format::Json);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["payload"].as_str(), v["attempt"].as_u64()),
            (Some(42), Some("hello"), Some(2))
        );
    }

    #[test]
    fn control_characters_are_escaped_for_a_terminal_and_kept_for_pipes_and_raw() {
        let evil = Message::new(
            Name::new("t").unwrap(),
            0,
            1,
            Timestamp::from_micros(1_780_000_000_000_000),
            Name::new("t").unwrap(),
            None,
            Bytes::from_static(b"evil\x1b]2;PWNED\x07\x1b[2J\r\n\x7f\xc2\x9b end"),
        );
        let shown = |format: Format, terminal: bool| {
            let mut out = Vec::new();
            Renderer::new(format, false).to_terminal(terminal).render(&evil, None, None, &mut out);
            out
        };
        let text = String::from_utf8(shown(Format::Text, true)).unwrap();
        assert!(text.ends_with("evil\\x1b]2;PWNED\\x07\\x1b[2J\\r\\n\\x7f\\x9b end\n"), "{text}");
        assert!(!text.trim_end_matches('\n').chars().any(char::is_control), "{text:?}");
        let template = String::from_utf8(shown(Format::Template("{{payload}}\\t|".into()), true)).unwrap();
        assert!(template.starts_with("evil\\x1b") && template.ends_with(" end\t|\n"), "{template:?}");
        // Piped, and raw even on a terminal, the bytes are the payload's own.
        assert!(String::from_utf8(shown(Format::Text, false)).unwrap().contains("\x1b]2;PWNED\x07"));
        assert_eq!(&shown(Format::Raw, true)[..], &[&evil.payload[..], b"\n"].concat()[..]);
    }

    #[test]
    fn unknown_format_names_the_choices() {
        assert!(Format::parse("yaml").unwrap_err().contains("text, json, raw"));
    }
}
