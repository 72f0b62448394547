//! Actions: what the user means (a key pressed in a context becomes one). `App::update` applies them.

use super::app::View;
use crate::demo::sim::Change;

/// A live control of a running demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoAction {
    /// Pause or resume.
    Pause,
    /// Slower virtual time.
    Slower,
    /// Faster virtual time.
    Faster,
    /// One step of 100 ms.
    Step,
    /// Start over with the same seed.
    Restart,
    /// Change the simulation near the selected node.
    Change(Change),
}

/// A UI intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave the TUI.
    Quit,
    /// Close the overlay, leave the detail, or quit at the top.
    Back,
    /// Open the key help.
    Help,
    /// Open the command palette.
    Palette,
    /// Show a view.
    SetView(View),
    /// Next view.
    NextView,
    /// Previous view.
    PrevView,
    /// Selection up.
    Up,
    /// Selection down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// First row.
    Top,
    /// Last row.
    Bottom,
    /// Open the selection (topic → its stream; message → detail; subscription → ack state).
    Enter,
    /// Filter the list by text.
    Filter,
    /// Filter the stream by fields (subject pattern, key, header, JSON path).
    StreamFilter,
    /// Pause or resume the stream display (ingest continues).
    TogglePause,
    /// Keep the newest message selected.
    ToggleFollow,
    /// Pretty JSON → raw → hex.
    CyclePayload,
    /// Copy the selected payload to the clipboard (OSC 52).
    Copy,
    /// Write the stream buffer to an NDJSON file.
    Export,
    /// Open the publish composer.
    Compose,
    /// Publish the selected message again.
    Republish,
    /// Next sort column.
    CycleSort,
    /// Reverse the sort.
    ReverseSort,
    /// Topic tree or flat list.
    ToggleTree,
    /// Per-message ack state of the selected subscription.
    ToggleAckState,
    /// Ask where to seek the selected subscription.
    SeekPrompt,
    /// Mouse capture on or off.
    ToggleMouse,
    /// Empty the stream buffer.
    ClearBuffer,
    /// A live demo control.
    Demo(DemoAction),
}
