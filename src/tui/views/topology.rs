//! The topology view: publishers → topics → subscriptions → consumers, left to right, with the publish
//! rate on each topic, the backlog on each subscription and the in-flight count on each consumer. Problems
//! (redeliveries, dead letters, a consumer silent past the ack deadline) are highlighted, and the line
//! under the view explains the concept of the selected row.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use super::chrome::pane;
use crate::model::{SubscriptionInfo, TopicInfo};
use crate::tui::app::App;

/// One row of the drawing: which node it is about (for the explain panel) and its spans.
pub struct TopoRow {
    /// What the row shows, for the explanation.
    pub kind: &'static str,
    /// The text.
    pub spans: Vec<(String, Style)>,
}

/// A role of a span, resolved to a colour when drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Connectors and labels.
    Dim,
    /// Publisher names.
    Publisher,
    /// Topic names.
    Topic,
    /// Subscription and consumer names.
    Name,
    /// A healthy number.
    Ok,
    /// Something to look at.
    Warn,
    /// A failure.
    Error,
}

/// Lays out the graph as rows (pure: tested and snapshot without a terminal).
pub fn rows(app: &App) -> Vec<TopoRow> {
    let mut out = Vec::new();
    let publishers_of = |topic: &TopicInfo| -> Vec<String> {
        app.publishers
            .iter()
            .filter(|(_, subjects)| {
                subjects.iter().any(|s| {
                    topic.subjects.iter().any(|p| crate::model::Pattern::parse(p).is_ok_and(|p| p.matches(s)))
                })
            })
            .map(|(name, _)| name.clone())
            .collect()
    };
    let topics: Vec<&TopicInfo> = app.topics.iter().filter(|t| !t.name.is_reserved()).collect();
    let publisher_label = |topic: &TopicInfo| {
        let pubs = publishers_of(topic);
        if pubs.is_empty() { "(any publisher)".to_string() } else { pubs.join(", ") }
    };
    // Columns as wide as their longest entry (names cut at NAME_WIDTH), not a fixed width each: with
    // fixed widths a topic with two subscriptions and two consumers ran past 120 columns.
    let subs_of = |topic: &TopicInfo| -> Vec<&SubscriptionInfo> {
        app.subs.iter().filter(|s| s.topic == topic.name).collect()
    };
    let widest = |lens: &mut dyn Iterator<Item = usize>| lens.max().unwrap_or(0).min(NAME_WIDTH);
    let pub_w = topics.iter().map(|t| publisher_label(t).chars().count()).max().unwrap_or(0).min(24);
    let topic_w = widest(&mut topics.iter().map(|t| t.name.as_str().chars().count()));
    let msgs_w = topics.iter().map(|t| t.messages.to_string().len()).max().unwrap_or(1);
    let all_subs: Vec<&SubscriptionInfo> = topics.iter().flat_map(|t| subs_of(t)).collect();
    let sub_w = widest(&mut all_subs.iter().map(|s| s.name.as_str().chars().count()));
    let backlog_w = all_subs.iter().map(|s| s.backlog.to_string().len()).max().unwrap_or(1);
    let cons_w = widest(&mut all_subs.iter().flat_map(|s| s.consumers.iter()).map(|c| c.id.chars().count()));
    for topic in topics {
        let subs = subs_of(topic);
        let mut first = vec![
            (format!("{} ", fit(&publisher_label(topic), pub_w, true)), Style::Publisher),
            (
                format!("──{:>5}/s─▶ ", crate::human::or_dash(topic.publish_rate, |r| format!("{r:.1}"))),
                Style::Dim,
            ),
            (fit(topic.name.as_str(), topic_w, false), Style::Topic),
            (format!(" {:>msgs_w$} msgs", topic.messages), Style::Dim),
        ];
        if topic.partitions > 1 {
            first.push((format!(" in {} partitions", topic.partitions), Style::Dim));
        }
        let topic_width = width(&first);
        if subs.is_empty() {
            first.push(("   (no subscriptions: nobody reads it)".into(), Style::Dim));
            out.push(TopoRow { kind: "topic", spans: first });
            continue;
        }
        for (si, sub) in subs.iter().enumerate() {
            let mut spans = if si == 0 {
                std::mem::take(&mut first)
            } else {
                vec![(" ".repeat(topic_width), Style::Dim)]
            };
            spans.push((branch(si, subs.len()).into(), Style::Dim));
            spans.push((fit(sub.name.as_str(), sub_w, false), Style::Name));
            let backlog_style = if sub.backlog == 0 {
                Style::Ok
            } else if app.trend(sub) == "growing" {
                Style::Error
            } else {
                Style::Warn
            };
            spans.push((format!(" backlog {:<backlog_w$}", sub.backlog), backlog_style));
            if sub.counters.dead_lettered > 0 || sub.counters.terminated > 0 {
                spans.push((
                    format!(" dead {:<3}", sub.counters.dead_lettered + sub.counters.terminated),
                    Style::Error,
                ));
            } else if sub.redelivered > 0 || sub.counters.redeliveries > 0 {
                spans.push((format!(" retried {:<3}", sub.counters.redeliveries), Style::Warn));
            }
            let kind = if subs.len() > 1 { "fan-out" } else { "subscription" };
            if sub.consumers.is_empty() {
                spans.push(("  (no consumer)".into(), Style::Dim));
                out.push(TopoRow { kind, spans });
                continue;
            }
            let sub_width = width(&spans);
            for (ci, c) in sub.consumers.iter().enumerate() {
                let mut row = if ci == 0 {
                    std::mem::take(&mut spans)
                } else {
                    vec![(" ".repeat(sub_width), Style::Dim)]
                };
                row.push((branch(ci, sub.consumers.len()).into(), Style::Dim));
                row.push((fit(c.id.as_ref(), cons_w, false), Style::Name));
                // Silent for longer than a lease while holding messages: it has probably died.
                let stuck = c.in_flight > 0 && c.idle > sub.ack_deadline;
                let style = if stuck {
                    Style::Error
                } else if c.in_flight > 0 {
                    Style::Warn
                } else {
                    Style::Ok
                };
                row.push((format!(" in flight {}", c.in_flight), style));
                // Where partitions are owned (a Kafka group), which ones this consumer holds.
                let owned: Vec<String> = sub
                    .partitions
                    .iter()
                    .filter(|p| p.owner.as_deref() == Some(c.id.as_ref()))
                    .map(|p| p.partition.to_string())
                    .collect();
                if sub.partitions.len() > 1 && !owned.is_empty() {
                    row.push((format!(" holds p{}", owned.join(",")), Style::Dim));
                }
                if stuck {
                    row.push((" (silent past its deadline)".into(), Style::Error));
                }
                let kind = if sub.consumers.len() > 1 { "competing consumers" } else { "consumer" };
                out.push(TopoRow { kind, spans: row });
            }
        }
    }
    out
}

/// The longest name a column shows; longer ones are cut with `…`.
const NAME_WIDTH: usize = 20;

/// The arrow to the `i`-th of `n` branches: one straight arrow, or a fork whose arms line up.
fn branch(i: usize, n: usize) -> &'static str {
    match (i, n) {
        (0, 1) => " ──▶ ",
        (0, _) => " ┬─▶ ",
        (i, n) if i + 1 == n => " └─▶ ",
        _ => " ├─▶ ",
    }
}

/// `text` in exactly `width` characters: padded (on the left when `right`), or cut with `…`.
fn fit(text: &str, width: usize, right: bool) -> String {
    if text.chars().count() > width {
        return super::fit(text, width);
    }
    if right { format!("{text:>width$}") } else { format!("{text:<width$}") }
}

fn width(spans: &[(String, Style)]) -> usize {
    spans.iter().map(|(t, _)| t.chars().count()).sum()
}

/// What each kind of row means, for the explain panel.
pub fn explain(kind: &str) -> &'static str {
    match kind {
        "topic" => {
            "A topic is an ordered log: publishers append, and it keeps messages until its limits remove them, read or not."
        }
        "subscription" => {
            "A subscription is a cursor with per-message state over one topic: it delivers each message, leases it, and waits for an ack."
        }
        "fan-out" => {
            "Fan-out: several subscriptions on one topic each get every message, independently and at their own pace."
        }
        "competing consumers" => {
            "Competing consumers share one subscription: each message goes to one of them, leased until acked or until the ack deadline passes."
        }
        "consumer" => {
            "A consumer receives through its subscription and acks what it finished; what it holds is in flight until then."
        }
        _ => "",
    }
}

/// The node the topology's selection points at (live controls act on it).
pub fn selected_node(app: &App) -> Option<crate::demo::sim::Node> {
    super::flow::selected(app)
}

/// How many nodes the selection moves over.
pub fn node_count(app: &App) -> usize {
    super::flow::build(app).nodes().count()
}

fn explain_node(app: &App, node: Option<&crate::demo::sim::Node>) -> &'static str {
    use crate::demo::sim::Node;
    let competing = |sub: &str| {
        let n = match &app.demo {
            Some(d) => d.consumers.iter().filter(|c| c.subscription == sub).count(),
            None => app.subs.iter().find(|s| s.name.as_str() == sub).map_or(0, |s| s.consumers.len()),
        };
        n > 1
    };
    match node {
        Some(Node::Publisher(_)) => {
            "A publisher appends messages to the topics whose subjects match; it never knows who reads them."
        }
        Some(Node::Topic(_)) => explain("topic"),
        Some(Node::Subscription(s)) => {
            let topic = app
                .demo
                .as_ref()
                .map_or(&app.subs, |d| &d.subscriptions)
                .iter()
                .find(|x| x.name.as_str() == s)
                .map(|x| x.topic.clone());
            let siblings = app
                .demo
                .as_ref()
                .map_or(&app.subs, |d| &d.subscriptions)
                .iter()
                .filter(|x| Some(&x.topic) == topic.as_ref())
                .count();
            if siblings > 1 { explain("fan-out") } else { explain("subscription") }
        }
        Some(Node::Consumer(c)) => {
            let sub = match &app.demo {
                Some(d) => d.consumers.iter().find(|x| x.name == *c).map(|x| x.subscription.clone()),
                None => app
                    .subs
                    .iter()
                    .find(|s| s.consumers.iter().any(|x| x.id.as_ref() == c.as_str()))
                    .map(|s| s.name.to_string()),
            };
            if sub.is_some_and(|s| competing(&s)) {
                explain("competing consumers")
            } else {
                explain("consumer")
            }
        }
        None => "",
    }
}

pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.theme;
    // The narration gets more lines on a taller screen: a room reads it from the back.
    let narration_h = if area.height >= 36 { 8 } else { 6 };
    let [graph, narration_area, explain_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(narration_h), Constraint::Length(3)])
            .areas(area);
    let recent: Vec<Line<'_>> = app
        .log
        .iter()
        .rev()
        .take(usize::from(narration_h.saturating_sub(2)))
        .rev()
        .map(|(_, text)| Line::from(Span::styled(text.clone(), t.fg(t.fg))))
        .collect();
    let narration =
        Paragraph::new(recent).block(pane(app, " what is happening ".into(), false)).style(t.text());
    frame.render_widget(narration, narration_area);
    let flow = super::flow::build(app);
    let mut title = " topology: publishers → topics → subscriptions → consumers ".to_string();
    if let Some(d) = &app.demo {
        let state = if d.paused { "⏸ PAUSED".to_string() } else { format!("▶ {}× speed", d.scale) };
        let script = if d.now < d.script {
            format!("script {:.0}/{:.0} s", d.now.as_secs_f64(), d.script.as_secs_f64())
        } else {
            "script over, running on".to_string()
        };
        title = format!(
            " topology: publishers → topics → subscriptions → consumers · {state} · t={:.1} s · {script} · seed {} ",
            d.now.as_secs_f64(),
            d.seed
        );
    }
    let block = pane(app, title, true);
    let inner = block.inner(graph);
    frame.render_widget(block.style(t.text()), graph);
    if flow.nodes().next().is_none() {
        frame.render_widget(Paragraph::new("no topics yet").style(t.fg(t.dim)), inner);
        return;
    }
    super::flow::paint(frame.buffer_mut(), inner, app, &flow);
    let node = flow.nodes().nth(app.topo_selected.min(flow.nodes().count() - 1)).map(|n| n.node.clone());
    let text = explain_node(app, node.as_ref());
    let explain_block = pane(app, " explain ".into(), false);
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: true }).block(explain_block).style(t.text()),
        explain_area,
    );
}
