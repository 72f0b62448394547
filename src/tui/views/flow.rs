//! The flow view: publishers → topics → subscriptions → consumers laid out as a tree over the whole
//! pane, with the rate on each edge, dots that move along busy edges (sampled: at most one every few
//! cells, however high the rate), a backlog bar on each subscription, and redeliveries and dead
//! letters counted in colour where they happen. Pure: `layout` computes cells, `draw` paints them.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;

use super::fit;
use crate::demo::sim::Node;
use crate::model::Pattern;
use crate::tui::app::App;
use crate::tui::theme::Theme;

/// A colour role, resolved against the theme when painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Lines and secondary text.
    Dim,
    /// Plain text.
    Text,
    /// Publisher names.
    Publisher,
    /// Topic names.
    Topic,
    /// Subscription and consumer names.
    Name,
    /// Healthy.
    Ok,
    /// Attention (redeliveries, a growing backlog).
    Warn,
    /// Failure (dead letters, a crash).
    Error,
    /// Messages on the move.
    Moving,
}

/// One box of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowNode {
    /// What it is.
    pub node: Node,
    /// Name line.
    pub label: String,
    /// Second line: numbers, state.
    pub detail: Vec<(String, Role)>,
    /// Name colour.
    pub role: Role,
}

/// An edge between boxes of neighbouring columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowEdge {
    /// Source column and index.
    pub from: (usize, usize),
    /// Target column and index.
    pub to: (usize, usize),
    /// Messages per second along it, when known.
    pub rate: Option<f64>,
    /// Counted trouble on it ("↻3", "✗2"), with its colour.
    pub note: Option<(String, Role)>,
}

/// The graph: four columns of boxes and the edges between them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flow {
    /// Publishers, topics, subscriptions, consumers.
    pub columns: [Vec<FlowNode>; 4],
    /// Edges.
    pub edges: Vec<FlowEdge>,
}

impl Flow {
    /// Every node in selection order (column by column).
    pub fn nodes(&self) -> impl Iterator<Item = &FlowNode> {
        self.columns.iter().flatten()
    }
}

fn rate_text(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else if r >= 10.0 || r.fract() == 0.0 {
        format!("{r:.0}/s")
    } else {
        format!("{r:.1}/s")
    }
}

/// A backlog bar, `width` cells: full at `max`.
fn bar(backlog: u64, max: u64, width: usize) -> String {
    let filled = if backlog == 0 {
        0
    } else {
        (usize::try_from(backlog.saturating_mul(width as u64) / max.max(1)).unwrap_or(width)).clamp(1, width)
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// Builds the graph from what the app knows: the demo's own state when a demo runs, else the polled
/// topics and subscriptions (and the demo publishers handed over at start).
pub fn build(app: &App) -> Flow {
    let mut flow = Flow::default();
    let (topics, subs) = match &app.demo {
        Some(d) => (&d.topics, &d.subscriptions),
        None => (&app.topics, &app.subs),
    };
    let topics: Vec<_> = topics.iter().filter(|t| !t.name.is_reserved()).collect();
    let publishers: Vec<PublisherRow> = match &app.demo {
        Some(d) => d.publishers.iter().map(|p| (p.name.clone(), p.subjects.clone(), Some(p.rate))).collect(),
        None => app.publishers.iter().map(|(n, s)| (n.clone(), s.clone(), None)).collect(),
    };
    let feeds = |subjects: &[String], topic: &crate::model::TopicInfo| {
        subjects.iter().any(|s| topic.subjects.iter().any(|p| Pattern::parse(p).is_ok_and(|p| p.matches(s))))
    };
    // Topics in order, and below each its subscriptions, and below each its consumers: the tree order
    // the layout keeps.
    for (ti, t) in topics.iter().enumerate() {
        let mut detail = vec![(format!("{} msgs", t.messages), Role::Dim)];
        if t.partitions > 1 {
            detail.push((format!(" · {} partitions", t.partitions), Role::Dim));
        }
        flow.columns[1].push(FlowNode {
            node: Node::Topic(t.name.to_string()),
            label: t.name.to_string(),
            detail,
            role: Role::Topic,
        });
        for s in subs.iter().filter(|s| s.topic == t.name) {
            let si = flow.columns[2].len();
            let dead = s.counters.dead_lettered + s.counters.terminated;
            let growing = app.trend(s) == "growing";
            let bar_role = if s.backlog == 0 {
                Role::Ok
            } else if growing || s.backlog >= 50 {
                Role::Error
            } else {
                Role::Warn
            };
            let mut detail = vec![(bar(s.backlog, 100.max(s.backlog.next_power_of_two()), 8), bar_role)];
            detail.push((format!(" {}", s.backlog), bar_role));
            if dead > 0 {
                let whither = s.dead_letter.as_ref().map_or(String::new(), |d| format!("→{d}"));
                detail.push((format!(" ✗{dead}{whither}"), Role::Error));
            }
            // Partitions and their owners, where the topic has them.
            let owned: Vec<String> = s
                .partitions
                .iter()
                .filter_map(|p| p.owner.as_ref().map(|o| format!("p{}:{o}", p.partition)))
                .collect();
            if s.partitions.len() > 1 && !owned.is_empty() {
                detail.push((format!(" {}", owned.join(" ")), Role::Dim));
            }
            flow.columns[2].push(FlowNode {
                node: Node::Subscription(s.name.to_string()),
                label: s.name.to_string(),
                detail,
                role: Role::Name,
            });
            let redelivered = s.counters.redeliveries;
            flow.edges.push(FlowEdge {
                from: (1, ti),
                to: (2, si),
                // In a demo, what its consumers took over the last simulated second (the engine's own
                // measure runs on the wall clock, which virtual time outpaces).
                rate: match &app.demo {
                    Some(d) => Some(
                        d.consumers
                            .iter()
                            .filter(|c| c.subscription == s.name.as_str())
                            .map(|c| c.rate)
                            .sum(),
                    ),
                    None => s.deliver_rate.or(Some(0.0)),
                },
                note: (redelivered > 0 && app.demo.is_none())
                    .then(|| (format!("↻{redelivered}"), Role::Warn)),
            });
            match &app.demo {
                Some(d) => {
                    for c in d.consumers.iter().filter(|c| c.subscription == s.name.as_str()) {
                        let ci = flow.columns[3].len();
                        let (detail, role) = if c.crashed {
                            (vec![("✗ CRASHED".to_string(), Role::Error)], Role::Error)
                        } else {
                            let mut d = vec![(
                                format!("{} held · {} each", c.held, crate::human::duration(c.process)),
                                if c.held > 0 { Role::Warn } else { Role::Ok },
                            )];
                            if c.fail_next > 0 {
                                d.push((format!(" · fails next {}", c.fail_next), Role::Error));
                            }
                            (d, Role::Name)
                        };
                        flow.columns[3].push(FlowNode {
                            node: Node::Consumer(c.name.clone()),
                            label: c.name.clone(),
                            detail,
                            role,
                        });
                        let note = match (c.redelivered, c.nacked) {
                            (0, 0) => None,
                            (r, 0) => Some((format!("↻{r}"), Role::Warn)),
                            (r, n) => Some((format!("↻{r} ✗{n}"), Role::Error)),
                        };
                        flow.edges.push(FlowEdge {
                            from: (2, si),
                            to: (3, ci),
                            rate: Some(if c.crashed { 0.0 } else { c.rate }),
                            note,
                        });
                    }
                    // Attendees who joined a shared demo as competing consumers, with their share.
                    let attendees = crate::demo::share::attendees(d);
                    for a in attendees.iter().filter(|a| a.subscription == s.name.as_str()) {
                        let ci = flow.columns[3].len();
                        flow.columns[3].push(FlowNode {
                            node: Node::Consumer(a.name.clone()),
                            label: a.name.clone(),
                            detail: vec![(
                                format!("{} got · {:.0}% of the work", a.delivered, a.share * 100.0),
                                if a.held > 0 { Role::Warn } else { Role::Ok },
                            )],
                            role: Role::Publisher,
                        });
                        flow.edges.push(FlowEdge { from: (2, si), to: (3, ci), rate: None, note: None });
                    }
                }
                None => {
                    for c in &s.consumers {
                        let ci = flow.columns[3].len();
                        let stuck = c.in_flight > 0 && c.idle > s.ack_deadline;
                        flow.columns[3].push(FlowNode {
                            node: Node::Consumer(c.id.to_string()),
                            label: c.id.to_string(),
                            detail: vec![(
                                if stuck {
                                    format!("{} held · silent", c.in_flight)
                                } else {
                                    format!("{} held", c.in_flight)
                                },
                                if stuck { Role::Error } else { Role::Ok },
                            )],
                            role: if stuck { Role::Error } else { Role::Name },
                        });
                        flow.edges.push(FlowEdge { from: (2, si), to: (3, ci), rate: None, note: None });
                    }
                }
            }
        }
    }
    // Publishers in the order of the first topic they feed, so their edges cross as little as can be.
    let mut pubs: Vec<(usize, &PublisherRow)> = publishers
        .iter()
        .map(|p| (topics.iter().position(|t| feeds(&p.1, t)).unwrap_or(usize::MAX), p))
        .collect();
    pubs.sort_by_key(|(t, _)| *t);
    for (pi, (_, (name, subjects, rate))) in pubs.into_iter().enumerate() {
        flow.columns[0].push(FlowNode {
            node: Node::Publisher(name.clone()),
            label: name.clone(),
            detail: vec![(rate.map_or_else(|| subjects.join(" "), rate_text), Role::Dim)],
            role: Role::Publisher,
        });
        for (ti, t) in topics.iter().enumerate() {
            if feeds(subjects, t) {
                flow.edges.push(FlowEdge {
                    from: (0, pi),
                    to: (1, ti),
                    rate: rate.or(t.publish_rate),
                    note: None,
                });
            }
        }
    }
    flow
}

/// The node the selection points at.
pub fn selected(app: &App) -> Option<Node> {
    let flow = build(app);
    let n = flow.nodes().count();
    flow.nodes().nth(app.topo_selected.min(n.saturating_sub(1))).map(|f| f.node.clone())
}

/// Where each node sits: its row (top line) in the area, or `None` when it did not fit.
struct Placed {
    rows: [Vec<Option<u16>>; 4],
    /// Rows per node: 1 (name only) or 2 (name and detail).
    lines: u16,
    /// Nodes left out for lack of rows.
    hidden: usize,
}

/// Rows for the tree: every consumer (or a subscription without one, or a topic without any) is a leaf
/// with a slot of its own; a parent sits at the middle of its children; publishers at their topic.
fn place(flow: &Flow, height: u16) -> Placed {
    let children = |col: usize, i: usize| -> Vec<usize> {
        flow.edges.iter().filter(|e| e.from == (col, i) && e.to.0 == col + 1).map(|e| e.to.1).collect()
    };
    // Leaves in tree order.
    let mut leaves: Vec<(usize, usize)> = Vec::new();
    for t in 0..flow.columns[1].len() {
        let subs = children(1, t);
        if subs.is_empty() {
            leaves.push((1, t));
        }
        for s in subs {
            let cons = children(2, s);
            if cons.is_empty() {
                leaves.push((2, s));
            }
            leaves.extend(cons.into_iter().map(|c| (3, c)));
        }
    }
    let pub_only = flow.columns[1].is_empty();
    if pub_only {
        leaves.extend((0..flow.columns[0].len()).map(|p| (0, p)));
    }
    let n = leaves.len().max(flow.columns[0].len()).max(1) as u16;
    let slot = (height / n).clamp(1, 6);
    let lines = if slot >= 2 { 2 } else { 1 };
    let fits = usize::from(if n * slot > height { height.saturating_sub(1) / slot } else { n });
    let top = height.saturating_sub(slot * n.min(fits as u16)) / 2;
    let mut rows: [Vec<Option<u16>>; 4] = std::array::from_fn(|c| vec![None; flow.columns[c].len()]);
    let mut hidden = 0;
    for (k, &(col, i)) in leaves.iter().enumerate() {
        if k < fits {
            rows[col][i] = Some(top + k as u16 * slot + (slot - lines) / 2);
        } else {
            hidden += 1;
        }
    }
    // Parents at the middle of their placed children, from consumers up to topics.
    for col in [2, 1] {
        for i in 0..flow.columns[col].len() {
            if rows[col][i].is_some() {
                continue;
            }
            let placed: Vec<u16> = children(col, i).into_iter().filter_map(|c| rows[col + 1][c]).collect();
            if let (Some(first), Some(last)) = (placed.first(), placed.last()) {
                rows[col][i] = Some((first + last) / 2);
            } else {
                hidden += 1;
            }
        }
    }
    // Publishers: each at the first topic it feeds, moved down past the one above when two would meet.
    if !pub_only {
        let mut next_free = 0u16;
        for p in 0..flow.columns[0].len() {
            let want = flow
                .edges
                .iter()
                .find(|e| e.from == (0, p))
                .and_then(|e| rows[1][e.to.1])
                .unwrap_or(next_free);
            let row = want.max(next_free);
            if row + lines <= height {
                rows[0][p] = Some(row);
                next_free = row + lines;
            } else {
                hidden += 1;
            }
        }
    }
    Placed { rows, lines, hidden }
}

/// A painted cell: its text and role.
type Cell = (char, Role);
/// Rows of cells.
pub type Grid = Vec<Vec<Cell>>;
/// Where the selected node's name is: x, y, length.
pub type Highlight = (u16, u16, u16);
/// A publisher: name, subjects, rate when known.
type PublisherRow = (String, Vec<String>, Option<f64>);

/// The whole graph as cells, `width` × `height`, with the selected node marked; `tick` moves the dots.
pub fn layout(
    flow: &Flow,
    width: u16,
    height: u16,
    selected: Option<usize>,
    tick: u64,
) -> (Grid, Vec<Highlight>) {
    let (w, h) = (usize::from(width), usize::from(height));
    let mut grid: Vec<Vec<Cell>> = vec![vec![(' ', Role::Dim); w]; h];
    let mut highlight = Vec::new();
    if w < 20 || h == 0 {
        return (grid, highlight);
    }
    let placed = place(flow, height);
    // Column widths from their widest name or detail, each at most a quarter of the room less the gaps.
    let text_w = |n: &FlowNode| {
        n.label.chars().count().max(
            n.detail.iter().map(|(t, _)| t.chars().count()).sum::<usize>() * usize::from(placed.lines >= 2),
        )
    };
    let max_col = (w.saturating_sub(3 * 6)) / 4;
    let col_w: Vec<usize> = flow
        .columns
        .iter()
        .map(|c| c.iter().map(text_w).max().unwrap_or(0).clamp(4, max_col.max(4)))
        .collect();
    let gap = (w.saturating_sub(col_w.iter().sum::<usize>()) / 3).clamp(4, 40);
    let mut xs = [0usize; 4];
    for c in 1..4 {
        xs[c] = xs[c - 1] + col_w[c - 1] + gap;
    }
    // Edges: a mask of directions per cell (up 1, right 2, down 4, left 8) drawn as box lines, then
    // the dots, then the labels on top.
    let mut mask = vec![vec![0u8; w]; h];
    let mut paths: Vec<(Vec<(usize, usize)>, &FlowEdge)> = Vec::new();
    for e in &flow.edges {
        let (Some(ya), Some(yb)) = (placed.rows[e.from.0][e.from.1], placed.rows[e.to.0][e.to.1]) else {
            continue;
        };
        let (ya, yb) = (usize::from(ya), usize::from(yb));
        let x0 = xs[e.from.0] + col_w[e.from.0] + 1;
        let x1 = (xs[e.to.0]).saturating_sub(2);
        if x1 <= x0 + 2 || x1 >= w {
            continue;
        }
        let xm = x0 + 1;
        let mut path = Vec::new();
        for x in x0..=xm {
            path.push((x, ya));
        }
        let (lo, hi) = (ya.min(yb), ya.max(yb));
        let vertical: Vec<usize> = if ya <= yb { (lo + 1..=hi).collect() } else { (lo..hi).rev().collect() };
        for y in vertical {
            path.push((xm, y));
        }
        for x in xm + 1..=x1 {
            path.push((x, yb));
        }
        for k in 0..path.len() {
            let (x, y) = path[k];
            let mut m = 0u8;
            for (nx, ny) in
                [k.checked_sub(1).map(|j| path[j]), path.get(k + 1).copied()].into_iter().flatten()
            {
                m |= if ny < y {
                    1
                } else if nx > x {
                    2
                } else if ny > y {
                    4
                } else {
                    8
                };
            }
            if k == 0 {
                m |= 8;
            }
            mask[y][x] |= m;
        }
        paths.push((path, e));
    }
    for y in 0..h {
        for x in 0..w {
            let ch = match mask[y][x] {
                0 => continue,
                1 | 4 | 5 => '│',
                2 | 8 | 10 => '─',
                6 => '┌',
                12 => '┐',
                3 => '└',
                9 => '┘',
                7 => '├',
                13 => '┤',
                14 => '┬',
                11 => '┴',
                _ => '┼',
            };
            grid[y][x] = (ch, Role::Dim);
        }
    }
    let mut labelled = std::collections::HashSet::new();
    for (path, e) in &paths {
        let Some(&(xe, ye)) = path.last() else { continue };
        let role = e.note.as_ref().map_or(Role::Dim, |(_, r)| *r);
        if role != Role::Dim {
            for &(x, y) in path {
                grid[y][x].1 = role;
            }
        }
        grid[ye][xe + 1] = ('▶', role);
        // Dots: one every `spacing` cells, fewer for slow edges, never closer than 3 (10 k/s included).
        let rate = e.rate.unwrap_or(0.0);
        if rate > 0.0 {
            let spacing = if rate >= 50.0 {
                3
            } else if rate >= 10.0 {
                4
            } else if rate >= 2.0 {
                6
            } else {
                10
            };
            let offset = usize::try_from(tick % spacing as u64).unwrap_or(0);
            for (k, &(x, y)) in path.iter().enumerate() {
                // Not on a corner or a junction: the shape of the edge stays readable.
                if k % spacing == offset && k + 1 < path.len() && matches!(mask[y][x], 5 | 10) {
                    grid[y][x] = ('•', Role::Moving);
                }
            }
        }
        // The rate (and any trouble) on the last straight run before the arrow; edges that merge into
        // one target (fan-in) share that run, so it shows their sum, once.
        if !labelled.insert(e.to) {
            continue;
        }
        let run: Vec<usize> = path.iter().rev().take_while(|(_, y)| *y == ye).map(|(x, _)| *x).collect();
        let merged: Vec<f64> = flow.edges.iter().filter(|o| o.to == e.to).filter_map(|o| o.rate).collect();
        let rate = (!merged.is_empty()).then(|| merged.iter().sum::<f64>()).filter(|_| e.rate.is_some());
        let mut label = rate.map(rate_text).unwrap_or_default();
        if let Some((note, _)) = &e.note {
            label = if label.is_empty() { note.clone() } else { format!("{label} {note}") };
        }
        let len = label.chars().count();
        if !label.is_empty() && run.len() >= len + 2 {
            let start = run[run.len() - 1] + (run.len() - len) / 2;
            for (k, ch) in label.chars().enumerate() {
                let r =
                    if k >= rate.map(rate_text).map_or(0, |t| t.chars().count()) { role } else { Role::Text };
                grid[ye][start + k] = (ch, if role == Role::Dim { Role::Text } else { r });
            }
        }
    }
    // Boxes.
    let mut index = 0;
    for (c, nodes) in flow.columns.iter().enumerate() {
        for (i, n) in nodes.iter().enumerate() {
            let this = index;
            index += 1;
            let Some(y) = placed.rows[c][i] else { continue };
            let y = usize::from(y);
            let x = xs[c];
            let cw = col_w[c];
            let label = fit(&n.label, cw);
            for (k, ch) in label.chars().enumerate() {
                grid[y][x + k] = (ch, n.role);
            }
            if selected == Some(this) {
                highlight.push((x as u16, y as u16, label.chars().count() as u16));
            }
            if placed.lines >= 2 && y + 1 < h {
                let mut k = 0;
                for (text, role) in &n.detail {
                    for ch in text.chars() {
                        if k < cw {
                            grid[y + 1][x + k] = (ch, *role);
                        }
                        k += 1;
                    }
                }
            } else if placed.lines < 2 {
                // One line per node: the detail follows the name when there is room before the edges.
                let mut k = label.chars().count() + 1;
                for (text, role) in &n.detail {
                    for ch in text.chars() {
                        if k < cw && x + k < w {
                            grid[y][x + k] = (ch, *role);
                        }
                        k += 1;
                    }
                }
            }
        }
    }
    if placed.hidden > 0 {
        let text = format!("… {} more not shown (a taller terminal shows them)", placed.hidden);
        for (k, ch) in text.chars().enumerate().take(w) {
            grid[h - 1][k] = (ch, Role::Dim);
        }
    }
    (grid, highlight)
}

fn color(t: &Theme, role: Role) -> Color {
    match role {
        Role::Dim => t.dim,
        Role::Text => t.fg,
        Role::Publisher => t.key,
        Role::Topic => t.topic,
        Role::Name => t.subject,
        Role::Ok => t.ok,
        Role::Warn => t.warn,
        Role::Error => t.error,
        Role::Moving => t.accent,
    }
}

/// Paints the graph into `area`.
pub fn paint(buf: &mut Buffer, area: Rect, app: &App, flow: &Flow) {
    let t = &app.theme;
    let n = flow.nodes().count();
    let selected = (n > 0).then(|| app.topo_selected.min(n - 1));
    // Dots move ten cells a second of demo time (and stand still while it is paused).
    let tick = match &app.demo {
        Some(d) => u64::try_from(d.now.as_millis() / 100).unwrap_or(0),
        None => u64::try_from(app.now.as_micros() / 100_000).unwrap_or(0),
    };
    let (grid, highlight) = layout(flow, area.width, area.height, selected, tick);
    for (y, row) in grid.iter().enumerate() {
        for (x, (ch, role)) in row.iter().enumerate() {
            if *ch == ' ' {
                continue;
            }
            if let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) {
                cell.set_char(*ch).set_style(t.fg(color(t, *role)));
            }
        }
    }
    for (x, y, len) in highlight {
        for k in 0..len {
            if let Some(cell) = buf.cell_mut((area.x + x + k, area.y + y)) {
                cell.set_style(t.selected());
            }
        }
    }
}
