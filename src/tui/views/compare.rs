//! The `demo --compare` view: one column per broker beside a column of row names, the counts so far
//! while the runs go on (then the final table, the numbers `compare::render` prints), cells that differ
//! from the first column marked `*` and highlighted, a rate sparkline, each column's latest narration
//! and its capability notes. The first column is the reference and always stays; when more brokers
//! than fit are compared (each column needs 20 cells, at most 5 are shown), ←/→ scroll the others.
//! A pure function of [`CompareState`]: `paint` fills a buffer, so it is snapshot-tested.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

use super::fit;
use crate::demo::compare::TableRow;
use crate::demo::progress::Phase;
use crate::tui::compare::{ColumnState, CompareState, KEYS};

/// The narrowest a broker column is drawn.
pub const MIN_COLUMN: usize = 20;
/// The cells a column's figures are right-aligned in.
const VALUE_BAND: usize = 14;
/// The most broker columns shown at once.
pub const MAX_SHOWN: usize = 5;

/// Draws the view over the whole frame.
pub fn draw(frame: &mut Frame<'_>, s: &CompareState) {
    let area = frame.area();
    paint(frame.buffer_mut(), area, s);
    if s.help {
        help(frame, area, s);
    }
}

/// Which broker columns are shown: the first, then as many of the others as fit from `scroll` on.
pub fn shown(s: &CompareState, width: usize, label_w: usize) -> Vec<usize> {
    let n = s.columns.len();
    let fit = (width.saturating_sub(label_w) / MIN_COLUMN).clamp(1, MAX_SHOWN);
    if n <= fit {
        return (0..n).collect();
    }
    let first = 1 + s.scroll.min(n - fit);
    std::iter::once(0).chain(first..first + fit - 1).collect()
}

/// Lines the parts below the title take: (summary, table, narration, notes).
fn heights(s: &CompareState, h: usize, rows: usize) -> (usize, usize, usize, usize) {
    // Title, column heads, rate, footer.
    let fixed = 4;
    let any_notes = s.columns.iter().any(|c| !c.notes.is_empty() || c.error.is_some());
    let tail_min = 2 + usize::from(any_notes);
    let avail = h.saturating_sub(fixed);
    if avail < rows + tail_min {
        let table = avail.saturating_sub(tail_min).max(1);
        let rest = avail.saturating_sub(table);
        let notes = usize::from(any_notes).min(rest.saturating_sub(1));
        return (0, table, rest - notes, notes);
    }
    let summary = usize::from(avail > rows + tail_min);
    let extra = avail - rows - summary;
    let narration = if any_notes { (extra / 2).clamp(2, 8) } else { extra.min(10) };
    (summary, rows, narration, if any_notes { extra - narration } else { 0 })
}

/// Paints the view into `area` of `buf`.
pub fn paint(buf: &mut Buffer, area: Rect, s: &CompareState) {
    let t = &s.theme;
    buf.set_style(area, t.text());
    let (w, h) = (usize::from(area.width), usize::from(area.height));
    if w < 30 || h < 8 {
        put(buf, area, 0, 0, "enlarge the terminal to compare", t.text(), w);
        return;
    }
    let mut rows = s.rows();
    // With room to spare (a projector's 200×60), a blank line sets each subscription apart.
    let names = rows.iter().filter(|r| r.cells.is_empty()).count();
    if h >= rows.len() + names + 16 {
        let spaced = rows.iter().flat_map(|r| {
            let gap = r.cells.is_empty().then(|| TableRow {
                label: String::new(),
                cells: Vec::new(),
                differs: Vec::new(),
            });
            gap.into_iter().chain(std::iter::once(r.clone()))
        });
        rows = spaced.collect();
    }
    let label_w = rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(0).clamp(12, 18) + 1;
    let cols = shown(s, w, label_w);
    let col_w = (w - label_w) / cols.len().max(1);
    let x_of = |k: usize| label_w + k * col_w;
    let (summary_h, table_h, narration_h, notes_h) = heights(s, h, rows.len());
    let dim = t.fg(t.dim);
    let bold = Modifier::BOLD;

    // Title: what runs, and where it is.
    let mut y = 0;
    let state = match (&s.finished, s.stopping, s.paused) {
        (Some(cmp), ..) => format!("done in {:.1} s: the final table", cmp.duration.as_secs_f64()),
        (None, true, _) => "stopping: each broker counts what it has and cleans up…".to_string(),
        (None, false, true) => {
            format!("PAUSED at {:.1} s of {:.1} s", s.elapsed().as_secs_f64(), s.duration.as_secs_f64())
        }
        (None, false, false) if s.columns.iter().all(|c| c.phase == Phase::Counting) => {
            "counting what arrived and what each broker still keeps…".to_string()
        }
        (None, false, false) => {
            format!("running {:.1} s of {:.1} s", s.elapsed().as_secs_f64(), s.duration.as_secs_f64())
        }
    };
    let mut x = put(buf, area, 0, y, " pubsub ", t.fg(t.accent).add_modifier(bold), w);
    x = put(buf, area, x, y, &format!("demo {} --compare · ", s.scenario), t.text(), w);
    let state_style = if s.paused || s.stopping { t.fg(t.warn).add_modifier(bold) } else { t.fg(t.ok) };
    put(buf, area, x, y, &state, state_style, w);
    y += 1;
    if summary_h > 0 {
        put(buf, area, 1, y, &format!("seed {} · {}", s.seed, s.summary), dim, w);
        y += 1;
    }

    // Column heads.
    for (k, &c) in cols.iter().enumerate() {
        let col = &s.columns[c];
        let (mark, role) = match col.phase {
            Phase::Connecting => ("…", t.dim),
            Phase::Running => ("●", t.ok),
            Phase::Counting => ("◌", t.warn),
            Phase::Done => ("✓", t.ok),
            Phase::Failed => ("✗", t.error),
        };
        let head = fit(&format!("{mark} [{}] {}", c + 1, col.label), col_w - 1);
        put(buf, area, x_of(k), y, &head, t.fg(role).add_modifier(bold), w);
    }
    y += 1;

    // The table, from the scrolled-to row.
    let table_y = y;
    let top = s.top.min(rows.len().saturating_sub(table_h));
    for (i, row) in rows.iter().skip(top).take(table_h).enumerate() {
        let below = rows.len() - top - i - 1;
        if i + 1 == table_h && below > 0 {
            put(buf, area, 0, y, &format!("… {below} more ↓"), t.fg(t.warn), w);
            break;
        }
        table_row(buf, area, s, row, &cols, (label_w, col_w), y);
        y += 1;
    }
    y = table_y + table_h;

    // Rate: what the consumers received, per second, over the last reports.
    put(buf, area, 0, y, "  rate", dim, w);
    for (k, &c) in cols.iter().enumerate() {
        let col = &s.columns[c];
        let now = col.rate.back().copied().unwrap_or(0) * 4;
        let label = format!(" {now}/s");
        let room = (col_w - 1).saturating_sub(label.chars().count());
        let samples: Vec<u64> = col.rate.iter().rev().take(room).rev().copied().collect();
        let line = format!("{}{label}", crate::human::sparkline(&samples));
        put(buf, area, x_of(k), y, &line, t.fg(t.accent), w);
    }
    y += 1;

    // What just happened, newest first, and the notes.
    put(buf, area, 0, y, "just now", dim, w);
    if notes_h > 0 {
        put(buf, area, 0, y + narration_h, "notes", dim, w);
    }
    for (k, &c) in cols.iter().enumerate() {
        let col = &s.columns[c];
        let x = x_of(k);
        for (i, (line, newest)) in narration(col, col_w - 1, narration_h).into_iter().enumerate() {
            put(buf, area, x, y + i, &line, if newest { t.text() } else { dim }, x + col_w - 1);
        }
        let mut notes: Vec<(String, Style)> = Vec::new();
        if let Some(e) = &col.error {
            notes.extend(
                wrap(&format!("did not run: {e}"), col_w - 1).into_iter().map(|l| (l, t.fg(t.error))),
            );
        }
        for note in &col.notes {
            notes.extend(wrap(&format!("• {note}"), col_w - 1).into_iter().map(|l| (l, t.fg(t.warn))));
        }
        let cut = notes.len() > notes_h;
        for (i, (line, style)) in notes.into_iter().take(notes_h).enumerate() {
            let line = if cut && i + 1 == notes_h { fit(&format!("{line}…"), col_w - 1) } else { line };
            put(buf, area, x, y + narration_h + i, &line, style, x + col_w - 1);
        }
    }

    // Footer: the keys that do something now (every key is in `?`).
    let scrolls = cols.len() < s.columns.len();
    let shown_list: Vec<String> = cols.iter().map(|k| (k + 1).to_string()).collect();
    let brokers = format!("brokers ({} of {} shown)", shown_list.join(","), s.columns.len());
    let rows_cut = rows.len() > table_h;
    let hints: Vec<(&str, &str)> = [
        Some((
            "q",
            if s.finished.is_some() { "quit (the table stays on the terminal)" } else { "stop and quit" },
        )),
        Some(("?", "help")),
        s.finished.is_none().then_some(("Space", if s.paused { "resume" } else { "pause" })),
        scrolls.then_some(("←→", &brokers)),
        rows_cut.then_some(("↑↓", "rows")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut x = 0;
    for (key, label) in hints {
        x = put(buf, area, x, h - 1, key, t.fg(t.accent).add_modifier(bold), w);
        x = put(buf, area, x, h - 1, &format!(" {label}  "), dim, w);
    }
}

/// One row of the table.
fn table_row(
    buf: &mut Buffer,
    area: Rect,
    s: &CompareState,
    row: &TableRow,
    cols: &[usize],
    (label_w, col_w): (usize, usize),
    y: usize,
) {
    let t = &s.theme;
    let w = usize::from(area.width);
    if row.cells.is_empty() {
        put(buf, area, 0, y, &fit(&row.label, label_w - 1), t.fg(t.subject).add_modifier(Modifier::BOLD), w);
        return;
    }
    put(buf, area, 0, y, &fit(&row.label, label_w - 1), t.fg(t.dim), w);
    let name = row.label.trim();
    for (k, &c) in cols.iter().enumerate() {
        let differs = row.differs.get(c).copied().unwrap_or(false);
        let value = row.cells.get(c).cloned().flatten().unwrap_or_else(|| "—".into());
        let text = fit(&format!("{value}{}", if differs { " *" } else { "  " }), (col_w - 1).min(VALUE_BAND));
        let style = if differs {
            if t.mono {
                Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
            } else {
                Style::default().fg(t.selection_fg).bg(t.warn).add_modifier(Modifier::BOLD)
            }
        } else {
            let trouble = match name {
                "lost" | "lost so far" => Some(t.error),
                "redelivered" | "duplicates" => Some(t.warn),
                "order" => (value == "broken").then_some(t.warn),
                _ => None,
            };
            match trouble {
                Some(color) if value != "0" && value != "kept" && value != "…" && value != "—" => {
                    t.fg(color)
                }
                _ => t.text(),
            }
        };
        // Figures right-aligned in a narrow band under the column's head, so that they line up with
        // each other and stay near their row's name however wide the column is.
        let band = (col_w - 1).min(VALUE_BAND);
        let x = label_w + k * col_w + band.saturating_sub(text.chars().count());
        put(buf, area, x, y, &text, style, w);
    }
}

/// A column's narration for `height` lines of `width`: newest first, each line wrapped; the flag says
/// whether a line belongs to the newest.
fn narration(col: &ColumnState, width: usize, height: usize) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    if col.lines.is_empty() {
        let waiting = match col.phase {
            Phase::Connecting => "connecting…",
            _ => "nothing to tell yet",
        };
        return vec![(fit(waiting, width), true)];
    }
    for (i, line) in col.lines.iter().rev().enumerate() {
        for part in wrap(line, width) {
            if out.len() == height {
                return out;
            }
            out.push((part, i == 0));
        }
    }
    out
}

/// `text` over lines of at most `width` characters, broken between words where it can be.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        loop {
            let used = line.chars().count();
            let len = word.chars().count();
            if used + usize::from(used > 0) + len <= width {
                if used > 0 {
                    line.push(' ');
                }
                line.push_str(&word);
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            // A word longer than the line: cut it.
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
            if word.is_empty() {
                break;
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Writes `text` at (`x`, `y`) of `area`, stopping before column `end`; returns the column after it.
fn put(buf: &mut Buffer, area: Rect, x: usize, y: usize, text: &str, style: Style, end: usize) -> usize {
    let mut x = x;
    if y >= usize::from(area.height) {
        return x;
    }
    let end = end.min(usize::from(area.width));
    for ch in text.chars() {
        if x >= end {
            break;
        }
        if let (Ok(cx), Ok(cy)) = (u16::try_from(x), u16::try_from(y))
            && let Some(cell) = buf.cell_mut((area.x + cx, area.y + cy))
        {
            cell.set_char(ch).set_style(style);
        }
        x += 1;
    }
    x
}

/// The keys and what the marks mean, over the view.
fn help(frame: &mut Frame<'_>, area: Rect, s: &CompareState) {
    let t = &s.theme;
    let mut lines = Vec::new();
    for (_, _, key, label) in KEYS {
        lines.push(ratatui::text::Line::from(vec![
            ratatui::text::Span::styled(format!("{key:>7}  "), t.fg(t.key)),
            ratatui::text::Span::styled(label.to_string(), t.text()),
        ]));
    }
    for text in [
        "",
        "The first column is the reference: a cell marked * differs from it.",
        "While the runs go on, counts a few apart are timing and not marked;",
        "the final table, counted after the run, marks every difference.",
        "Pause stops every publisher and consumer; the brokers' own clocks",
        "(lease deadlines) run on. Quitting early still counts and cleans up.",
        "",
        "any key closes this help",
    ] {
        lines.push(ratatui::text::Line::from(ratatui::text::Span::styled(text, t.fg(t.dim))));
    }
    let width = 76.min(area.width);
    let height = (lines.len() as u16 + 2).min(area.height);
    let rect =
        Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    frame.render_widget(Clear, rect);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border(true).bg(t.bg))
        .title(ratatui::text::Span::styled(" keys ", t.fg(t.accent)));
    frame.render_widget(Paragraph::new(lines).block(block).style(t.text()), rect);
}

/// The view as plain text, one line per row (for `--snapshot`).
pub fn text(s: &CompareState, width: u16, height: u16) -> String {
    let area = Rect::new(0, 0, width, height);
    let mut buf = Buffer::empty(area);
    paint(&mut buf, area, s);
    super::buffer_text(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_wrap_within_the_column_and_long_ones_are_cut() {
        assert_eq!(
            wrap("app goes OFFLINE and stops listening", 12),
            ["app goes", "OFFLINE and", "stops", "listening"]
        );
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(fit("redis streams", 6), "redis…");
    }
}
