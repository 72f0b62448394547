//! What surrounds every view: the header (views, broker, link), the footer (keys or the prompt), the
//! help overlay and the publish composer.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::tui::app::{App, Link, Prompt, View};

pub(super) fn header(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let mut spans = vec![Span::styled(" pubsub ", t.fg(t.accent).add_modifier(Modifier::BOLD))];
    for view in [View::Topics, View::Stream, View::Subscriptions, View::Topology, View::Log] {
        let style = if view == app.view { t.selected() } else { t.fg(t.dim) };
        spans.push(Span::styled(format!(" {} ", view.title()), style));
        spans.push(Span::raw(" "));
    }
    let link = match &app.link {
        Link::Up => Span::styled(format!(" ● {}", app.broker), t.fg(t.ok)),
        Link::Down(reason) => {
            Span::styled(format!(" ○ {} — reconnecting ({reason})", app.broker), t.fg(t.error))
        }
    };
    spans.push(link);
    frame.render_widget(Paragraph::new(Line::from(spans)).style(t.text()), area);
}

pub(super) fn footer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let line = if let Some((kind, text)) = &app.prompt {
        let label = match kind {
            Prompt::Filter => "filter: ".to_string(),
            Prompt::StreamFilter => "field filter (subject key=V hdr.N=V $.path=V): ".to_string(),
            Prompt::Palette => ":".to_string(),
            Prompt::Seek(sub) => {
                format!("seek {sub} to (start, end, seq, -5m){}: ", seek_preview(app, sub, text))
            }
        };
        Line::from(vec![
            Span::styled(label, t.fg(t.accent)),
            Span::raw(text.clone()),
            Span::styled("█", t.fg(t.accent)),
        ])
    } else if let Some((_, text)) = &app.flash {
        Line::from(Span::styled(text.clone(), t.fg(t.warn)))
    } else if app.demo.is_some() && app.view == View::Topology {
        // Two lines: time and help first, then what changes the topology; where a group is wider than
        // the terminal, the hints flow over both lines and what does not fit whole is left to `?`.
        let (time, changes) = crate::tui::keymap::DEMO_FOOTER.split_at(8);
        let width = usize::from(area.width);
        let (rows, gap) = match [time, changes].map(|group| hints_width(group, 2)) {
            [a, b] if a <= width + 2 && b <= width + 2 => (vec![time.to_vec(), changes.to_vec()], 2),
            _ => pack_hints(crate::tui::keymap::DEMO_FOOTER, width, usize::from(area.height).max(1)),
        };
        let lines: Vec<Line<'_>> = rows
            .iter()
            .map(|hints| {
                let mut spans = Vec::new();
                for (key, label) in hints {
                    spans.push(Span::styled(key.to_string(), t.fg(t.accent).add_modifier(Modifier::BOLD)));
                    spans.push(Span::styled(format!(" {label}{}", " ".repeat(gap)), t.fg(t.dim)));
                }
                Line::from(spans)
            })
            .collect();
        return frame.render_widget(Paragraph::new(lines).style(t.text()), area);
    } else {
        let mut spans = Vec::new();
        for (key, label) in app.keymap.footer(app.view) {
            spans.push(Span::styled(key, t.fg(t.accent).add_modifier(Modifier::BOLD)));
            spans.push(Span::styled(format!(" {label}  "), t.fg(t.dim)));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line).style(t.text()), area);
}

/// Columns `hints` take on one line, `key label` each, `gap` spaces after each label.
fn hints_width(hints: &[(&str, &str)], gap: usize) -> usize {
    hints.iter().map(|(key, label)| Span::raw(format!("{key} {label}")).width() + gap).sum()
}

/// Lays `hints` out in order over at most `rows` lines of `width` columns, never cutting one: with two
/// spaces between hints when they all fit so, else with one (the gap is returned with the lines); what
/// still does not fit is left out.
fn pack_hints<'a>(
    hints: &[(&'a str, &'a str)],
    width: usize,
    rows: usize,
) -> (Vec<Vec<(&'a str, &'a str)>>, usize) {
    let lay = |gap: usize| {
        let mut lines: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
        let mut used = 0;
        for &hint in hints {
            let w = hints_width(&[hint], gap);
            if used + w > width + gap && !lines.last().is_some_and(Vec::is_empty) {
                if lines.len() == rows {
                    return (lines, false);
                }
                lines.push(Vec::new());
                used = 0;
            }
            if let Some(line) = lines.last_mut() {
                line.push(hint);
            }
            used += w;
        }
        (lines, true)
    };
    match lay(2) {
        (lines, true) => (lines, 2),
        _ => (lay(1).0, 1),
    }
}

/// What a seek to `text` would do, from the subscription's current numbers.
fn seek_preview(app: &App, sub: &crate::model::Name, text: &str) -> String {
    let Some(s) = app.subs.iter().find(|s| s.name == *sub) else { return String::new() };
    let target = match crate::model::Position::parse(text, app.now) {
        Ok(crate::model::Position::Start) => s.first_seq,
        Ok(crate::model::Position::End) => s.head_seq + 1,
        Ok(crate::model::Position::Seq(n)) => n.clamp(s.first_seq, s.head_seq + 1),
        _ => return String::new(),
    };
    if target <= s.delivered_seq {
        format!(" [replays {} message(s)]", s.delivered_seq + 1 - target)
    } else {
        format!(" [skips {} message(s)]", target - s.delivered_seq - 1)
    }
}

/// A rectangle centred in `area`, `w` × `h` at most.
pub(super) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

pub(super) fn help(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    let mut lines = Vec::new();
    for (title, keys) in app.keymap.help() {
        // The demo's controls only mean something while a demo runs.
        if title.starts_with("Live demo") && app.demo.is_none() {
            continue;
        }
        lines.push(Line::from(Span::styled(title, t.fg(t.accent).add_modifier(Modifier::BOLD))));
        let mut row = Vec::new();
        for (key, label) in keys {
            row.push(Span::styled(format!("{key:>9} "), t.fg(t.key)));
            row.push(Span::raw(format!("{label:<22}")));
            if row.len() >= 6 {
                lines.push(Line::from(std::mem::take(&mut row)));
            }
        }
        if !row.is_empty() {
            lines.push(Line::from(row));
        }
    }
    lines.push(Line::from(Span::styled("any key closes this help", t.fg(t.dim))));
    let rect = centered(area, 100, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    let block = Block::default().borders(Borders::ALL).border_style(t.border(true)).title(" keys ");
    frame.render_widget(Paragraph::new(lines).block(block).style(t.text()), rect);
}

pub(super) fn composer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(c) = &app.composer else { return };
    let t = &app.theme;
    let rect = centered(area, 80, 16);
    frame.render_widget(Clear, rect);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border(true))
        .title(" publish — Tab next field, Ctrl+S send, Esc cancel ");
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .split(inner);
    let field = |i: usize, label: &str, value: &str| {
        let style = if c.field == i { t.fg(t.accent).add_modifier(Modifier::BOLD) } else { t.fg(t.dim) };
        let cursor = if c.field == i { "█" } else { "" };
        Paragraph::new(Line::from(vec![
            Span::styled(format!("{label:>8}: "), style),
            Span::raw(format!("{value}{cursor}")),
        ]))
    };
    frame.render_widget(field(0, "topic", &c.topic), rows[0]);
    frame.render_widget(field(1, "key", &c.key), rows[1]);
    frame.render_widget(field(2, "headers", &c.headers), rows[2]);
    let payload_style = if c.field == 3 { t.border(true) } else { t.border(false) };
    let cursor = if c.field == 3 { "█" } else { "" };
    frame.render_widget(
        Paragraph::new(format!("{}{cursor}", c.payload))
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::TOP).border_style(payload_style).title(" payload ")),
        rows[3],
    );
    if let Some(e) = &c.error {
        frame.render_widget(Paragraph::new(e.clone()).style(Style::default().fg(t.error)), rows[4]);
    }
}

/// A titled pane.
pub(super) fn pane<'a>(app: &App, title: String, focused: bool) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.border(focused))
        .title(Span::styled(title, app.theme.fg(app.theme.accent)))
}

/// "not available on this broker", where the data would be.
pub(super) fn unavailable(frame: &mut Frame<'_>, area: Rect, app: &App, what: &str) {
    let t = &app.theme;
    let text = format!("{what}: not available on this broker ({})", app.broker);
    frame.render_widget(
        Paragraph::new(text).style(t.fg(t.dim)).block(pane(app, " unavailable ".into(), false)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::keymap::DEMO_FOOTER;

    #[test]
    fn demo_hints_are_never_cut_and_fill_two_lines_in_order_at_80_columns() {
        let (rows, gap) = pack_hints(DEMO_FOOTER, 80, 2);
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert!(hints_width(row, gap) <= 80 + gap, "{row:?} is wider than 80 columns");
        }
        let shown: Vec<_> = rows.concat();
        assert_eq!(shown[..], DEMO_FOOTER[..shown.len()], "hints keep their order, the first ones kept");
        assert!(shown.iter().any(|(key, _)| *key == "?"), "help, which lists every key, is always shown");
        // Wide enough, everything is shown with the roomier gap.
        let (rows, gap) = pack_hints(DEMO_FOOTER, 400, 2);
        assert_eq!((rows.concat().len(), gap), (DEMO_FOOTER.len(), 2));
        // Very narrow: one hint a line at least, nothing cut.
        let (rows, _) = pack_hints(DEMO_FOOTER, 8, 2);
        assert_eq!(rows.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }
}
