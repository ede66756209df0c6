//! `tollgate usage`: totals of the recorded calls, grouped by key, project, model or
//! day, straight from the store.

use clap::{Args, ValueEnum};
use tollgate_store::{UsageFilter, UsageGroup};

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// How to group the totals.
    #[arg(long, value_enum, default_value = "model")]
    by: By,
    /// How far back to look: 30m, 24h, 7d, …
    #[arg(long, default_value = "24h")]
    since: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Key,
    Project,
    Model,
    Day,
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let since_ms = state::now_ms() - state::parse_span_ms(&args.since)?;
    let group = match args.by {
        By::Key => UsageGroup::Key,
        By::Project => UsageGroup::Project,
        By::Model => UsageGroup::Model,
        By::Day => UsageGroup::Day,
    };
    let store = args.state.open().await?;
    let totals = store.usage_totals(&UsageFilter { group, since_ms }).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&totals)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = totals
        .iter()
        .map(|t| {
            vec![
                t.group.clone(),
                t.requests.to_string(),
                t.errors.to_string(),
                t.input_tokens.to_string(),
                t.cached_tokens.to_string(),
                t.output_tokens.to_string(),
                t.reasoning_tokens.to_string(),
                t.total_tokens.to_string(),
            ]
        })
        .collect();
    let first = match args.by {
        By::Key => "KEY",
        By::Project => "PROJECT/ENV",
        By::Model => "MODEL (SERVED)",
        By::Day => "DAY (UTC)",
    };
    state::print_table(
        &[
            first,
            "REQUESTS",
            "ERRORS",
            "INPUT",
            "CACHED",
            "OUTPUT",
            "REASONING",
            "TOTAL",
        ],
        &rows,
    );
    if rows.is_empty() {
        println!("(no usage since {} ago)", args.since);
    }
    Ok(())
}
