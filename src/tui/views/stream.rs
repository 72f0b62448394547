//! The stream view: live messages (newest at the bottom), pause with "+N new", and a detail pane with
//! pretty JSON, raw text or hex, headers and metadata.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use super::chrome::pane;
use crate::human::bytes;
use crate::protocol::envelope::format_time;
use crate::tui::app::App;
use crate::tui::ring::Entry;
use crate::tui::stream::PayloadView;

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let s = &app.stream;
    let (list_area, detail_area) = if s.detail {
        let [a, b] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(area);
        (a, Some(b))
    } else {
        (area, None)
    };
    list(frame, list_area, app);
    if let Some(detail_area) = detail_area {
        detail(frame, detail_area, app);
    }
}

fn list(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.stream;
    let mut title = String::from(" stream");
    if let Some(scope) = &s.scope {
        title.push_str(&format!(" of {scope}"));
    }
    if !s.filter.text.is_empty() {
        title.push_str(&format!(" where {}", s.filter.text));
    }
    title.push_str(&format!(
        " — {} shown, {} kept ({})",
        s.shown_len(),
        s.ring.len(),
        bytes(s.ring.bytes() as u64)
    ));
    if s.ring.dropped > 0 {
        title.push_str(&format!(", {} dropped from view", s.ring.dropped));
    }
    if s.paused_at.is_some() {
        title.push_str(&format!(" — PAUSED +{} new", s.new_while_paused()));
    } else if s.follow {
        title.push_str(" — following");
    }
    title.push(' ');
    let block = pane(app, title, true);
    let height = usize::from(area.height.saturating_sub(2)).max(1);
    let len = s.shown_len();
    if len == 0 {
        let msg = if s.ring.is_empty() {
            "waiting for messages…"
        } else {
            "no message passes the filter (Esc clears it)"
        };
        frame.render_widget(Paragraph::new(msg).style(t.fg(t.dim)).block(block), area);
        return;
    }
    let selected = s.selection().unwrap_or(len - 1);
    // Only the rows that fit are built: the window ends at the selection or the newest message.
    let end = (selected + 1).max(height.min(len)).min(len);
    let start = end.saturating_sub(height);
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line<'_>> = (start..end)
        .filter_map(|i| s.entry(i).map(|e| (i, e)))
        .map(|(i, e)| {
            let line = row(app, e, width);
            if i == selected { line.style(t.selected()) } else { line }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block).style(t.text()), area);
}

fn row<'a>(app: &App, e: &'a Entry, width: usize) -> Line<'a> {
    let t = &app.theme;
    let m = &e.message;
    let time = format_time(m.publish_time);
    let clock = time.get(11..23).unwrap_or(&time).to_string();
    let mut spans = vec![
        Span::styled(clock, t.fg(t.dim)),
        Span::raw(" "),
        Span::styled(m.subject().to_string(), t.fg(t.subject)),
        Span::styled(
            if app.partitions_of(&m.topic) > 1 {
                format!(" #{}:{}", m.partition, m.seq)
            } else {
                format!(" #{}", m.seq)
            },
            t.fg(t.dim),
        ),
    ];
    if let Some(key) = m.key() {
        spans.push(Span::styled(format!(" key={}", String::from_utf8_lossy(key)), t.fg(t.key)));
    }
    spans.push(Span::raw(" "));
    let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    let room = width.saturating_sub(used);
    // Bytes that are not UTF-8 show as hex: a lossy decode would only show replacement characters.
    let mut preview: String = match std::str::from_utf8(&m.payload) {
        Ok(text) => text.chars().map(|c| if c.is_control() { '·' } else { c }).take(room).collect(),
        Err(_) => {
            let hex: Vec<String> = m.payload.iter().take(room / 3 + 1).map(|b| format!("{b:02x}")).collect();
            format!("hex {}", hex.join(" ")).chars().take(room).collect()
        }
    };
    if e.truncated() && preview.chars().count() < room {
        preview.push_str(&format!(" … ({})", bytes(e.size as u64)));
    }
    spans.push(Span::raw(preview));
    Line::from(spans)
}

fn detail(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let Some(e) = app.stream.selected_entry() else { return };
    let m = &e.message;
    let view = match app.stream.payload_view {
        PayloadView::Pretty => "pretty",
        PayloadView::Raw => "raw",
        PayloadView::Hex => "hex",
    };
    let position = if app.partitions_of(&m.topic) > 1 {
        format!("{}:{}", m.partition, m.seq)
    } else {
        m.seq.to_string()
    };
    let block = pane(app, format!(" message {}#{position} — {view} (v cycles) ", m.topic), false);
    let mut lines = vec![
        Line::from(vec![
            Span::styled("subject   ", t.fg(t.dim)),
            Span::styled(m.subject().to_string(), t.fg(t.subject)),
        ]),
        Line::from(vec![Span::styled("time      ", t.fg(t.dim)), Span::raw(format_time(m.publish_time))]),
        Line::from(vec![
            Span::styled("size      ", t.fg(t.dim)),
            Span::raw(if e.truncated() {
                format!("{} (showing the first {})", bytes(e.size as u64), bytes(m.payload.len() as u64))
            } else {
                bytes(e.size as u64)
            }),
        ]),
    ];
    if let Some(key) = m.key() {
        lines.push(Line::from(vec![
            Span::styled("key       ", t.fg(t.dim)),
            Span::styled(String::from_utf8_lossy(key).into_owned(), t.fg(t.key)),
        ]));
    }
    for (k, v) in m.headers() {
        lines.push(Line::from(vec![
            Span::styled(format!("header    {k}: "), t.fg(t.dim)),
            Span::raw(v.clone()),
        ]));
    }
    lines.push(Line::raw(""));
    let budget = usize::from(area.height).saturating_mul(2);
    for text in payload_lines(&m.payload, app.stream.payload_view).into_iter().take(budget) {
        lines.push(Line::raw(text));
    }
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }).style(t.text()), area);
}

/// The payload as display lines in the chosen presentation.
///
/// Pretty shows JSON indented, text as text, and anything else (bytes that are not UTF-8, or control
/// characters other than line breaks and tabs) as a hex dump: a lossy decode would show replacement
/// characters and hand escape sequences to the terminal. Raw shows the text with control characters
/// as `·`, so that nothing in a payload acts on the terminal.
pub fn payload_lines(payload: &[u8], view: PayloadView) -> Vec<String> {
    match view {
        PayloadView::Pretty => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                return serde_json::to_string_pretty(&v)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
            match std::str::from_utf8(payload) {
                Ok(text) if !text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => {
                    text.lines().map(str::to_string).collect()
                }
                _ => {
                    let mut lines = vec![format!(
                        "binary payload, {} — shown as hex (v: raw, hex)",
                        bytes(payload.len() as u64)
                    )];
                    lines.extend(hex_lines(payload));
                    lines
                }
            }
        }
        PayloadView::Raw => String::from_utf8_lossy(payload)
            .lines()
            .map(|l| l.chars().map(|c| if c.is_control() && c != '\t' { '·' } else { c }).collect())
            .collect(),
        PayloadView::Hex => hex_lines(payload),
    }
}

/// Sixteen bytes a line: offset, hex, and the printable ASCII.
fn hex_lines(payload: &[u8]) -> Vec<String> {
    payload
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = chunk
                .iter()
                .map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' })
                .collect();
            format!("{:08x}  {:<47}  {ascii}", i * 16, hex.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_render_as_pretty_json_raw_or_hex() {
        assert_eq!(payload_lines(br#"{"a":1}"#, PayloadView::Pretty), vec!["{", "  \"a\": 1", "}"]);
        assert_eq!(payload_lines(b"x\ny", PayloadView::Raw), vec!["x", "y"]);
        assert_eq!(
            payload_lines(&[0, 65], PayloadView::Hex),
            vec!["00000000  00 41                                            .A"]
        );
    }

    #[test]
    fn binary_and_control_characters_are_never_decoded_for_the_terminal() {
        // Issue 19 point 11: pretty mode decoded binary payloads lossily, garbling the pane.
        let lines = payload_lines(&[0xff, 0x00, b'A'], PayloadView::Pretty);
        assert!(lines[0].starts_with("binary payload, 3 B"), "{lines:?}");
        assert_eq!(lines[1], "00000000  ff 00 41                                         ..A");
        let lines = payload_lines(b"evil\x1b]2;x\x07", PayloadView::Pretty);
        assert!(lines[0].starts_with("binary payload"), "{lines:?}");
        assert_eq!(payload_lines(b"plain\ttext\nnext", PayloadView::Pretty), vec!["plain\ttext", "next"]);
        assert_eq!(payload_lines(b"a\x1bb", PayloadView::Raw), vec!["a·b"]);
    }
}
