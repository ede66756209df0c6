//! `tollgate audit`: the append-only log of key and project changes (who, what, when,
//! from where), straight from the store.

use clap::Args;

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How far back to look: 30m, 24h, 7d, …
    #[arg(long, default_value = "24h")]
    since: String,
    /// At most this many entries (oldest first).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArgs,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let since_ms = state::now_ms() - state::positive_span(&args.since)?;
    let store = args.state.open_existing().await?;
    let entries = store.list_audit(since_ms, i64::from(args.limit)).await?;
    if args.json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let detail = serde_json::from_str::<serde_json::Value>(&e.detail)
                    .unwrap_or_else(|_| serde_json::Value::String(e.detail.clone()));
                serde_json::json!({
                    "id": e.id, "at_ms": e.at_ms, "actor": e.actor, "action": e.action,
                    "target": e.target, "detail": detail, "source": e.source,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                state::format_ms(e.at_ms),
                e.actor.clone(),
                e.source.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    state::print_table(
        &["AT (UTC)", "ACTOR", "SOURCE", "ACTION", "TARGET", "DETAIL"],
        &rows,
    );
    Ok(())
}
