//! `tollgate caps set|list|clear`: output caps of a project or of one of its keys — the
//! largest output a request may ask for (clamped or refused above it), a default when
//! it asks for none, and a temperature range — straight on the store, audited. Running
//! servers pick a change up within `keys.refresh_interval_ms`.

use clap::{Args, Subcommand};
use tollgate_store::{OutputCap, OutputCapRule, OverCap, Store};

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct CapsArgs {
    #[command(subcommand)]
    command: CapsCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Subcommand)]
enum CapsCommand {
    /// Set the caps of a project, or of one of its keys (which then replace the
    /// project's for that key), replacing what it had.
    Set {
        #[arg(long)]
        project: String,
        /// Only this key (its id, `key_…`).
        #[arg(long = "key", value_name = "KEY_ID")]
        key_id: Option<String>,
        /// The most output tokens a request may ask for.
        #[arg(long)]
        max_output_tokens: Option<u64>,
        /// What a request above the maximum gets: clamp (lowered to it) or refuse (400).
        #[arg(long, default_value = "clamp", value_parser = ["clamp", "refuse"])]
        over: String,
        /// The output tokens a request that sets none is given.
        #[arg(long)]
        default_output_tokens: Option<u64>,
        /// Allowed temperatures, `MIN..MAX` (within 0..2).
        #[arg(long, value_name = "MIN..MAX")]
        temperature: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the caps, of one project or of all.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the caps of a project, or of one of its keys.
    Clear {
        #[arg(long)]
        project: String,
        #[arg(long = "key", value_name = "KEY_ID")]
        key_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: CapsArgs) -> anyhow::Result<()> {
    let store = args.state.open().await?;
    match args.command {
        CapsCommand::Set {
            project,
            key_id,
            max_output_tokens,
            over,
            default_output_tokens,
            temperature,
            json,
        } => {
            let (temperature_min, temperature_max) = match temperature.as_deref() {
                None => (None, None),
                Some(t) => {
                    let (lo, hi) = parse_range(t)?;
                    (Some(lo), Some(hi))
                }
            };
            let cap = OutputCap {
                max_output_tokens,
                over: over.parse::<OverCap>().map_err(anyhow::Error::msg)?,
                default_output_tokens,
                temperature_min,
                temperature_max,
            };
            set(&store, &project, key_id.as_deref(), &cap, json).await
        }
        CapsCommand::List { project, json } => list(&store, project.as_deref(), json).await,
        CapsCommand::Clear {
            project,
            key_id,
            json,
        } => clear(&store, &project, key_id.as_deref(), json).await,
    }
}

async fn set(
    store: &Store,
    project: &str,
    key_id: Option<&str>,
    cap: &OutputCap,
    json: bool,
) -> anyhow::Result<()> {
    let rule = store
        .set_output_cap(project, key_id, cap, state::now_ms(), &state::actor())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rule)?);
    } else {
        println!("Output caps of {}: {}.", owner(&rule), describe(&rule.cap));
    }
    Ok(())
}

async fn list(store: &Store, project: Option<&str>, json: bool) -> anyhow::Result<()> {
    let caps = store.list_output_caps(project).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
        return Ok(());
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let rows: Vec<Vec<String>> = caps
        .iter()
        .map(|r| {
            let temp = match (r.cap.temperature_min, r.cap.temperature_max) {
                (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
                _ => "-".to_owned(),
            };
            vec![
                r.project.clone(),
                r.key_id.clone().unwrap_or_else(|| "*".to_owned()),
                opt(r.cap.max_output_tokens),
                r.cap.over.as_str().to_owned(),
                opt(r.cap.default_output_tokens),
                temp,
            ]
        })
        .collect();
    state::print_table(
        &[
            "PROJECT",
            "KEY",
            "MAX OUTPUT",
            "OVER",
            "DEFAULT",
            "TEMPERATURE",
        ],
        &rows,
    );
    Ok(())
}

async fn clear(
    store: &Store,
    project: &str,
    key_id: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let removed = store
        .clear_output_cap(project, key_id, state::now_ms(), &state::actor())
        .await?;
    let who = key_id.map_or_else(
        || format!("project {project}"),
        |k| format!("key {k} of project {project}"),
    );
    if json {
        let out = serde_json::json!({ "project": project, "key_id": key_id, "cleared": removed });
        println!("{out}");
    } else if removed {
        println!("Output caps of {who} cleared.");
    } else {
        anyhow::bail!("{who} has no output caps; see `tollgate caps list`");
    }
    Ok(())
}

/// `0..1.2` → (0.0, 1.2).
fn parse_range(t: &str) -> anyhow::Result<(f64, f64)> {
    let (lo, hi) = t
        .split_once("..")
        .ok_or_else(|| anyhow::anyhow!("--temperature {t:?}: write MIN..MAX, e.g. 0..1.2"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--temperature {t:?}: {s:?} is not a number"))
    };
    Ok((num(lo)?, num(hi)?))
}

fn owner(rule: &OutputCapRule) -> String {
    match &rule.key_id {
        Some(k) => format!("key {k} of project {}", rule.project),
        None => format!("project {}", rule.project),
    }
}

fn describe(cap: &OutputCap) -> String {
    let mut parts = Vec::new();
    if let Some(m) = cap.max_output_tokens {
        parts.push(format!(
            "at most {m} output tokens ({} above)",
            cap.over.as_str()
        ));
    }
    if let Some(d) = cap.default_output_tokens {
        parts.push(format!("{d} when a request sets none"));
    }
    if let (Some(lo), Some(hi)) = (cap.temperature_min, cap.temperature_max) {
        parts.push(format!("temperature {lo}..{hi}"));
    }
    parts.join(", ")
}
