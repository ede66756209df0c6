//! `tollgate budgets set|show|clear`: spend budgets in USD per calendar day and month
//! (UTC) for a project, one of its environments or one of its keys, straight on the
//! store and written to the audit log. Running servers pick a change up within
//! `keys.refresh_interval_ms` (they poll the store's `limits_version`).

use clap::{Args, Subcommand};
use tollgate_gateway::budgets::{self, BudgetReport, PeriodReport};
use tollgate_store::BudgetScope;

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct BudgetsArgs {
    #[command(subcommand)]
    command: BudgetsCommand,
    #[command(flatten)]
    state: StateArgs,
}

/// Who a budget governs: a project, or one of its environments, or one of its keys.
#[derive(Debug, Args)]
struct ScopeArgs {
    /// The project the budget governs.
    #[arg(long)]
    project: String,
    /// Only the calls of keys of this environment.
    #[arg(long, conflicts_with = "key_id")]
    env: Option<String>,
    /// Only the calls of this key (its id, `key_…`).
    #[arg(long = "key", value_name = "KEY_ID")]
    key_id: Option<String>,
}

impl ScopeArgs {
    fn scope(self) -> BudgetScope {
        BudgetScope {
            project: self.project,
            env: self.env,
            key_id: self.key_id,
        }
    }
}

#[derive(Debug, Subcommand)]
enum BudgetsCommand {
    /// Set the budget of a scope (replacing the scope's budget if it has one). Every
    /// budget that governs a call must have room for its worst-case cost.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// USD per calendar day (UTC), e.g. 5 or 0.25.
        #[arg(long, value_name = "USD", required_unless_present = "monthly")]
        daily: Option<String>,
        /// USD per calendar month (UTC).
        #[arg(long, value_name = "USD")]
        monthly: Option<String>,
        /// Percent of a limit at which spend is announced (log, metric, webhook), once
        /// per period [default: 80].
        #[arg(long, value_name = "N")]
        soft_percent: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Show the budgets (of one project, or of all) with what was spent this period,
    /// what remains and when it resets.
    Show {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the budget of exactly this scope.
    Clear {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: BudgetsArgs) -> anyhow::Result<()> {
    let store = args.state.open().await?;
    match args.command {
        BudgetsCommand::Set {
            scope,
            daily,
            monthly,
            soft_percent,
            json,
        } => {
            let usd = |v: Option<String>| -> anyhow::Result<Option<u64>> {
                v.map(|v| budgets::parse_usd(&v).map_err(anyhow::Error::msg))
                    .transpose()
            };
            let (daily, monthly) = (usd(daily)?, usd(monthly)?);
            let scope = scope.scope();
            let b = store
                .set_budget(
                    &scope,
                    daily,
                    monthly,
                    soft_percent,
                    state::now_ms(),
                    &state::actor(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                let limits: Vec<String> =
                    [("day", b.daily_usd_nanos), ("month", b.monthly_usd_nanos)]
                        .iter()
                        .filter_map(|(p, v)| v.map(|v| format!("${} per {p}", budgets::usd(v))))
                        .collect();
                println!(
                    "Budget of {}: {} (soft threshold {} %).",
                    b.scope,
                    limits.join(", "),
                    b.soft_percent
                );
            }
        }
        BudgetsCommand::Show { project, json } => {
            let reports = budgets::report(&store, project.as_deref(), state::now_ms()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print(&reports);
            }
        }
        BudgetsCommand::Clear { scope, json } => {
            let scope = scope.scope();
            let removed = store
                .clear_budget(&scope, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "scope": scope, "cleared": removed })
                );
            } else if removed {
                println!("Budget of {scope} cleared.");
            } else {
                anyhow::bail!(
                    "no budget has exactly the scope {scope}; see `tollgate budgets show`"
                );
            }
        }
    }
    Ok(())
}

fn print(reports: &[BudgetReport]) {
    let any = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".to_owned());
    let mut rows = Vec::new();
    for r in reports {
        let s = &r.budget.scope;
        for (name, p) in [("day", &r.day), ("month", &r.month)] {
            let Some(p): &Option<PeriodReport> = p else {
                continue;
            };
            rows.push(vec![
                s.project.clone(),
                any(&s.env),
                any(&s.key_id),
                name.to_owned(),
                format!("${}", p.limit_usd),
                format!("${}", p.spent_usd),
                format!("${}", p.remaining_usd),
                format!("{} %", r.budget.soft_percent),
                state::format_ms(p.resets_at_ms),
            ]);
        }
    }
    state::print_table(
        &[
            "PROJECT",
            "ENV",
            "KEY",
            "PERIOD",
            "LIMIT",
            "SPENT",
            "REMAINING",
            "SOFT",
            "RESETS (UTC)",
        ],
        &rows,
    );
}
