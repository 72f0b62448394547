//! `pubsub join URL`: watch a shared demo (`pubsub demo NAME --share`) in the topology view, read-only:
//! the teacher's state and narration arrive on `$demo.status` (`crate::demo::share`).

use std::io::IsTerminal;

use clap::Args;

use crate::broker::url::{ConnectOptions, connect_with};
use crate::cli::output::note;
use crate::cli::{CliError, Context};
use crate::demo::live::DemoStatus;

/// Options of `pubsub join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The shared demo's URL as the teacher printed it (ws://HOST:PORT?token=T); --broker when omitted.
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Theme: default, light, high-contrast, colorblind, mono, or one of yours (config dir `themes/`).
    #[arg(long, env = "PUBSUB_THEME", value_name = "NAME")]
    pub theme: Option<String>,
    /// On quit, write the last view as text to this file.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<std::path::PathBuf>,
}

/// Runs `pubsub join`.
pub async fn run(ctx: &Context, args: JoinArgs) -> Result<(), CliError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "pubsub join needs a terminal; without one, open the web page the teacher printed".into(),
        ));
    }
    let url = match (&args.url, ctx.broker_explicit) {
        (Some(url), _) => url.clone(),
        (None, true) => ctx.broker.clone(),
        (None, false) => {
            return Err(CliError::Usage(
                "pubsub join takes the URL the teacher printed: pubsub join 'ws://HOST:PORT?token=T'".into(),
            ));
        }
    };
    let opts = ConnectOptions { autostart: false, token: ctx.token.clone() };
    let connected = connect_with(&url, &opts).await?;
    if let Some(notice) = &connected.notice {
        note(notice);
    }
    let broker = connected.broker;
    let (status_tx, status_rx) = tokio::sync::watch::channel(DemoStatus::default());
    let (narration_tx, narration_rx) = tokio::sync::mpsc::channel(1024);
    let watching = tokio::spawn(crate::demo::share::watch(broker.clone(), status_tx, narration_tx));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let theme = args.theme.unwrap_or_else(|| if no_color { "mono".into() } else { "default".into() });
    let opts = super::demo::watching(theme, false, args.snapshot);
    let demo = crate::tui::DemoFeed {
        publishers: Vec::new(),
        narration: Some(narration_rx),
        controls: None,
        status: Some(status_rx),
    };
    let ui = crate::tui::run_with_view(broker, opts, crate::tui::app::View::Topology, demo).await;
    watching.abort();
    ui.map_err(|e| match e {
        crate::tui::TuiError::Broker(b) => CliError::Broker(b),
        other => CliError::Failed(other.to_string()),
    })
}
