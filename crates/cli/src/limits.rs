//! `tollgate limits set|list|clear`: rate-limit rules (requests and tokens per minute)
//! for a project, optionally narrowed to an environment, a key and a model, straight
//! on the store and written to the audit log. Running servers pick a change up within
//! `keys.refresh_interval_ms` (they poll the store's `limits_version`).

use clap::{Args, Subcommand};
use tollgate_store::{LimitScope, RateLimitRule, Store};

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(subcommand)]
    command: LimitsCommand,
    #[command(flatten)]
    state: StateArgs,
}

/// The scope of a rule: a project, and optionally an environment, a key and a model.
#[derive(Debug, Args)]
struct ScopeArgs {
    /// The project the rule governs.
    #[arg(long)]
    project: String,
    /// Only requests of keys of this environment.
    #[arg(long)]
    env: Option<String>,
    /// Only requests of this key (its id, `key_…`).
    #[arg(long = "key", value_name = "KEY_ID")]
    key_id: Option<String>,
    /// Only requests for this model: the model a call resolves to (an alias's
    /// target, not the alias).
    #[arg(long)]
    model: Option<String>,
}

impl ScopeArgs {
    fn scope(self) -> LimitScope {
        LimitScope {
            project: self.project,
            env: self.env,
            key_id: self.key_id,
            model: self.model,
        }
    }
}

#[derive(Debug, Subcommand)]
enum LimitsCommand {
    /// Set the limits of a scope (replacing the scope's rule if it has one). Every
    /// rule that matches a request must admit it: the strictest applies.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Requests per minute.
        #[arg(long, required_unless_present = "tpm")]
        rpm: Option<u64>,
        /// Tokens per minute (input plus output).
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List the rules, of one project or of all.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the rule of exactly this scope.
    Clear {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: LimitsArgs) -> anyhow::Result<()> {
    let store = args.state.open().await?;
    match args.command {
        LimitsCommand::Set {
            scope,
            rpm,
            tpm,
            json,
        } => {
            let scope = scope.scope();
            if let Some(model) = &scope.model {
                refuse_alias(&args.state, &store, &scope.project, model).await?;
            }
            let rule = store
                .set_rate_limit(&scope, rpm, tpm, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rule)?);
            } else {
                println!("Rate limit of {}: {}.", rule.scope, limits_label(&rule));
            }
        }
        LimitsCommand::List { project, json } => list(&store, project.as_deref(), json).await?,
        LimitsCommand::Clear { scope, json } => {
            let scope = scope.scope();
            let removed = store
                .clear_rate_limit(&scope, state::now_ms(), &state::actor())
                .await?;
            if json {
                let out = serde_json::json!({ "scope": scope, "cleared": removed });
                println!("{out}");
            } else if removed {
                println!("Rate limit of {scope} cleared.");
            } else {
                anyhow::bail!(
                    "no rate limit has exactly the scope {scope}; see `tollgate limits list`"
                );
            }
        }
    }
    Ok(())
}

/// Refuses a rule on an alias: rules match the model a call resolves to, so one on
/// an alias would never apply. The aliases are the project's own (the store's) and the
/// gateway's (built in, with the config file's `[aliases]` and `OPENAI_MODEL` over
/// them).
async fn refuse_alias(
    state: &StateArgs,
    store: &Store,
    project: &str,
    model: &str,
) -> anyhow::Result<()> {
    let own = store.list_model_aliases(Some(project)).await?;
    let target = match own.into_iter().find(|a| a.alias == model) {
        Some(a) => Some(a.model),
        None => {
            let mut configured = state.file_config()?.aliases;
            // As `serve` takes it: OPENAI_MODEL names the `default` alias.
            if let Ok(m) = std::env::var("OPENAI_MODEL") {
                if !m.trim().is_empty() {
                    configured.insert("default".into(), m.trim().to_owned());
                }
            }
            tollgate_gateway::models::global_aliases(&configured).remove(model)
        }
    };
    if let Some(target) = target {
        anyhow::bail!(
            "{model:?} is an alias of {target:?}: rate-limit rules match the model a call \
             resolves to, so a rule on the alias would never apply; use --model {target}"
        );
    }
    Ok(())
}

async fn list(store: &Store, project: Option<&str>, json: bool) -> anyhow::Result<()> {
    let rules = store.list_rate_limits(project).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(());
    }
    let any = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".to_owned());
    let per_min = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.scope.project.clone(),
                any(&r.scope.env),
                any(&r.scope.key_id),
                any(&r.scope.model),
                per_min(r.rpm),
                per_min(r.tpm),
                state::format_ms(r.updated_at_ms),
            ]
        })
        .collect();
    state::print_table(
        &["PROJECT", "ENV", "KEY", "MODEL", "RPM", "TPM", "UPDATED"],
        &rows,
    );
    Ok(())
}

fn limits_label(rule: &RateLimitRule) -> String {
    let parts: Vec<String> = [("requests", rule.rpm), ("tokens", rule.tpm)]
        .iter()
        .filter_map(|(what, v)| v.map(|v| format!("{v} {what}/min")))
        .collect();
    parts.join(", ")
}
