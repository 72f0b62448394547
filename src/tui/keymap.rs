//! The one keymap registry: key handling, the footer and the `?` overlay all read it.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::action::Action;
use super::app::View;

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere (unless typing).
    Global,
    /// Lists: topics, subscriptions, stream.
    List,
    /// One view.
    View(View),
}

/// One binding.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// The key.
    pub code: KeyCode,
    /// Modifiers that must be held.
    pub mods: KeyModifiers,
    /// Where it applies.
    pub scope: Scope,
    /// What it does.
    pub action: Action,
    /// How the footer and help name the key.
    pub key: &'static str,
    /// What the help says it does.
    pub label: &'static str,
    /// Whether the footer shows it.
    pub footer: bool,
}

const NONE: KeyModifiers = KeyModifiers::NONE;
const CTRL: KeyModifiers = KeyModifiers::CONTROL;
const SHIFT: KeyModifiers = KeyModifiers::SHIFT;

const fn bind(
    code: KeyCode,
    mods: KeyModifiers,
    scope: Scope,
    action: Action,
    key: &'static str,
    label: &'static str,
    footer: bool,
) -> Binding {
    Binding { code, mods, scope, action, key, label, footer }
}

use Scope::{Global, List};

/// Every binding, in the order help shows them.
pub const BINDINGS: &[Binding] = &[
    bind(KeyCode::Char('?'), NONE, Global, Action::Help, "?", "help", true),
    bind(KeyCode::F(1), NONE, Global, Action::Help, "F1", "help", false),
    bind(KeyCode::Char(':'), NONE, Global, Action::Palette, ":", "command palette", true),
    bind(KeyCode::Char('q'), NONE, Global, Action::Back, "q", "back / quit", true),
    bind(KeyCode::Char('c'), CTRL, Global, Action::Quit, "Ctrl+C", "quit", false),
    bind(KeyCode::Esc, NONE, Global, Action::Back, "Esc", "close / back", false),
    bind(KeyCode::Tab, NONE, Global, Action::NextView, "Tab", "next view", false),
    bind(KeyCode::BackTab, SHIFT, Global, Action::PrevView, "Shift+Tab", "previous view", false),
    bind(KeyCode::Char('1'), NONE, Global, Action::SetView(View::Topics), "1", "topics", false),
    bind(KeyCode::Char('2'), NONE, Global, Action::SetView(View::Stream), "2", "stream", false),
    bind(KeyCode::Char('3'), NONE, Global, Action::SetView(View::Subscriptions), "3", "subscriptions", false),
    bind(KeyCode::Char('4'), NONE, Global, Action::SetView(View::Topology), "4", "topology", false),
    bind(KeyCode::Char('6'), NONE, Global, Action::SetView(View::Log), "6", "engine events", false),
    bind(KeyCode::Char('P'), SHIFT, Global, Action::Compose, "P", "publish", true),
    bind(KeyCode::Char('M'), SHIFT, Global, Action::ToggleMouse, "M", "mouse on/off", false),
    bind(KeyCode::Char('r'), CTRL, Global, Action::ClearBuffer, "Ctrl+R", "clear the stream buffer", false),
    bind(KeyCode::Down, NONE, List, Action::Down, "↓", "down", false),
    bind(KeyCode::Char('j'), NONE, List, Action::Down, "j", "down", false),
    bind(KeyCode::Up, NONE, List, Action::Up, "↑", "up", false),
    bind(KeyCode::Char('k'), NONE, List, Action::Up, "k", "up", false),
    bind(KeyCode::Home, NONE, List, Action::Top, "Home", "top", false),
    bind(KeyCode::Char('g'), NONE, List, Action::Top, "g", "top", false),
    bind(KeyCode::End, NONE, List, Action::Bottom, "End", "bottom", false),
    bind(KeyCode::Char('G'), SHIFT, List, Action::Bottom, "G", "bottom", false),
    bind(KeyCode::PageDown, NONE, List, Action::PageDown, "PgDn", "page down", false),
    bind(KeyCode::Char('d'), CTRL, List, Action::PageDown, "Ctrl+D", "page down", false),
    bind(KeyCode::PageUp, NONE, List, Action::PageUp, "PgUp", "page up", false),
    bind(KeyCode::Char('u'), CTRL, List, Action::PageUp, "Ctrl+U", "page up", false),
    bind(KeyCode::Enter, NONE, List, Action::Enter, "Enter", "open", true),
    bind(KeyCode::Char('/'), NONE, List, Action::Filter, "/", "filter", true),
    bind(KeyCode::Char('s'), NONE, Scope::View(View::Topics), Action::CycleSort, "s", "sort", true),
    bind(
        KeyCode::Char('S'),
        SHIFT,
        Scope::View(View::Topics),
        Action::ReverseSort,
        "S",
        "reverse sort",
        false,
    ),
    bind(KeyCode::Char('t'), NONE, Scope::View(View::Topics), Action::ToggleTree, "t", "tree / list", true),
    bind(KeyCode::Char(' '), NONE, Scope::View(View::Stream), Action::TogglePause, "Space", "pause", true),
    bind(KeyCode::Char('f'), NONE, Scope::View(View::Stream), Action::ToggleFollow, "f", "follow", true),
    bind(
        KeyCode::Char('v'),
        NONE,
        Scope::View(View::Stream),
        Action::CyclePayload,
        "v",
        "json/raw/hex",
        true,
    ),
    bind(
        KeyCode::Char('\\'),
        NONE,
        Scope::View(View::Stream),
        Action::StreamFilter,
        "\\",
        "field filter",
        true,
    ),
    bind(KeyCode::Char('y'), NONE, Scope::View(View::Stream), Action::Copy, "y", "copy payload", false),
    bind(KeyCode::Char('e'), NONE, Scope::View(View::Stream), Action::Export, "e", "export NDJSON", false),
    bind(KeyCode::Char('R'), SHIFT, Scope::View(View::Stream), Action::Republish, "R", "republish", false),
    bind(
        KeyCode::Char('a'),
        NONE,
        Scope::View(View::Subscriptions),
        Action::ToggleAckState,
        "a",
        "ack state",
        true,
    ),
    bind(KeyCode::Char('x'), NONE, Scope::View(View::Subscriptions), Action::SeekPrompt, "x", "seek", true),
];

/// The action a key press means in `view` (typing is handled before this).
pub fn lookup(view: View, key: KeyEvent) -> Option<Action> {
    BINDINGS.iter().find(|b| applies(b, view) && matches(b, key)).map(|b| b.action)
}

fn applies(b: &Binding, view: View) -> bool {
    match b.scope {
        Scope::Global => true,
        Scope::List => {
            view != View::Log || matches!(b.action, Action::Up | Action::Down | Action::Top | Action::Bottom)
        }
        Scope::View(v) => v == view,
    }
}

fn matches(b: &Binding, key: KeyEvent) -> bool {
    let code_matches = match (b.code, key.code) {
        // Letters with Shift arrive as the upper-case char, sometimes with SHIFT set and sometimes not.
        (KeyCode::Char(a), KeyCode::Char(c)) => a == c,
        (a, c) => a == c,
    };
    let mods = key.modifiers - KeyModifiers::SHIFT;
    code_matches && (mods == (b.mods - KeyModifiers::SHIFT))
}

/// The footer's hints for `view`: the keys valid there, most useful first.
pub fn footer(view: View) -> Vec<(&'static str, &'static str)> {
    let mut specific: Vec<_> = BINDINGS
        .iter()
        .filter(|b| b.footer && matches!(b.scope, Scope::View(v) if v == view))
        .map(|b| (b.key, b.label))
        .collect();
    let rest = BINDINGS
        .iter()
        .filter(|b| b.footer && (b.scope == Scope::Global || (b.scope == Scope::List && applies(b, view))))
        .map(|b| (b.key, b.label));
    specific.extend(rest);
    specific
}

/// Help text, grouped: (group title, [(key, label)]).
pub fn help() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let group = |pred: &dyn Fn(&Binding) -> bool| {
        BINDINGS.iter().filter(|b| pred(b)).map(|b| (b.key, b.label)).collect()
    };
    vec![
        ("Global", group(&|b| b.scope == Scope::Global)),
        ("Lists", group(&|b| b.scope == Scope::List)),
        ("Topics", group(&|b| b.scope == Scope::View(View::Topics))),
        ("Stream", group(&|b| b.scope == Scope::View(View::Stream))),
        ("Subscriptions", group(&|b| b.scope == Scope::View(View::Subscriptions))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_mean_what_the_registry_says_in_each_view() {
        assert_eq!(lookup(View::Stream, key(KeyCode::Char(' '))), Some(Action::TogglePause));
        assert_eq!(lookup(View::Topics, key(KeyCode::Char(' '))), None);
        assert_eq!(lookup(View::Topics, key(KeyCode::Char('j'))), Some(Action::Down));
        assert_eq!(
            lookup(View::Topics, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            lookup(View::Topics, KeyEvent::new(KeyCode::Char('P'), KeyModifiers::SHIFT)),
            Some(Action::Compose)
        );
        assert_eq!(lookup(View::Topics, key(KeyCode::Char('P'))), Some(Action::Compose));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                let same_key = a.code == b.code && a.mods == b.mods;
                assert!(!(same_key && a.scope == b.scope), "{} bound twice", a.key);
            }
        }
    }

    #[test]
    fn footer_and_help_come_from_the_registry() {
        let footer = footer(View::Stream);
        assert_eq!(footer.first(), Some(&("Space", "pause")));
        assert!(footer.contains(&("?", "help")));
        assert!(
            help().iter().any(|(title, keys)| *title == "Stream" && keys.contains(&("v", "json/raw/hex")))
        );
    }
}
