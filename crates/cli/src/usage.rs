//! `tollgate usage`: totals of the recorded calls, grouped by key, project, model or
//! day, straight from the store, with what they cost (priced from the model catalog
//! when each record was written; records of models it does not know count as
//! unpriced, never as free).

use clap::{Args, ValueEnum};
use tollgate_gateway::catalog::Cost;
use tollgate_store::{UsageFilter, UsageGroup, UsageTotals};

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
    let since_ms = state::now_ms() - state::positive_span(&args.since)?;
    let group = match args.by {
        By::Key => UsageGroup::Key,
        By::Project => UsageGroup::Project,
        By::Model => UsageGroup::Model,
        By::Day => UsageGroup::Day,
    };
    let store = args.state.open_existing().await?;
    let totals = store.usage_totals(&UsageFilter { group, since_ms }).await?;
    if args.json {
        return print_json(&totals);
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
                cost_usd(t).map_or_else(|| "-".into(), |c| format!("${c}")),
                t.unpriced.to_string(),
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
            "COST (USD)",
            "UNPRICED",
        ],
        &rows,
    );
    if rows.is_empty() {
        println!("(no usage since {} ago)", args.since);
    } else if totals.iter().any(|t| t.unpriced > 0) {
        println!(
            "(UNPRICED: records of models not in the catalog, or written before costs were \
             recorded; COST leaves them out — see `tollgate models`)"
        );
    }
    Ok(())
}

/// The totals as a JSON array, each with `cost_usd` as a decimal string (or null).
fn print_json(totals: &[UsageTotals]) -> anyhow::Result<()> {
    let rows = totals
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t)?;
            v["cost_usd"] = cost_usd(t).map_or(serde_json::Value::Null, Into::into);
            Ok(v)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

/// The group's cost in dollars (`0.000405`), `None` when no record was priced.
fn cost_usd(t: &UsageTotals) -> Option<String> {
    t.cost_usd_nanos.map(|c| Cost(c).to_string())
}
