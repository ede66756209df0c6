//! `tollgate models`: the model catalog as a cheat sheet (prices in USD per 1M tokens),
//! and `tollgate models cost`: what a request of given token counts would cost. Both
//! read the built-in catalog with the config file's `[[models]]` entries applied.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_gateway::catalog::{self, BilledTokens, Catalog, ModelEntry, Price};
use tollgate_gateway::config::RawConfig;
use tollgate_gateway::Config;

use crate::state;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// tollgate.toml whose `[[models]]` entries replace or add to the built-in ones.
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Estimate what a request costs, from its token counts.
    Cost(CostArgs),
}

#[derive(Debug, Args)]
struct CostArgs {
    /// A catalog id or a dated snapshot of one (gpt-4o-2024-08-06).
    #[arg(long)]
    model: String,
    /// Input tokens, cached ones included (as OpenAI's usage reports them).
    #[arg(long)]
    input: u64,
    /// Output tokens, reasoning tokens included.
    #[arg(long, default_value_t = 0)]
    output: u64,
    /// How many of the input tokens were cached (billed at the cached-input price).
    #[arg(long, default_value_t = 0)]
    cached: u64,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let raw = match &args.config {
        Some(path) => state::read_config(path)?,
        None => RawConfig::default(),
    };
    let config =
        Config::try_from(raw).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    match args.command {
        None => {
            list(&config.catalog, args.json);
            Ok(())
        }
        Some(ModelsCommand::Cost(c)) => cost(&config.catalog, &c, args.json),
    }
}

/// `$0.15`, or `-` when there is no price.
fn dollars(p: Option<Price>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("${}", p.usd_per_1m()))
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn list(catalog: &Catalog, as_json: bool) {
    if as_json {
        let all: Vec<Value> = catalog.entries().map(entry_json).collect();
        println!(
            "{}",
            json!({ "price_unit": "USD per 1M tokens", "models": all })
        );
        return;
    }
    let rows: Vec<Vec<String>> = catalog
        .entries()
        .map(|m| {
            vec![
                m.id.clone(),
                count(m.context_window),
                count(m.max_output_tokens),
                m.latency.as_str().to_owned(),
                dollars(Some(m.input)),
                dollars(m.cached_input),
                dollars(m.output),
                m.prices_checked.clone().unwrap_or_else(|| "-".into()),
                m.best_use.clone(),
            ]
        })
        .collect();
    state::print_table(
        &[
            "MODEL",
            "CONTEXT",
            "MAX OUTPUT",
            "LATENCY",
            "INPUT/1M",
            "CACHED/1M",
            "OUTPUT/1M",
            "CHECKED",
            "BEST USE",
        ],
        &rows,
    );
    println!(
        "\nPrices in USD per 1M tokens (not per 1K). `-` cached: billed as input. \
         Dated snapshot ids resolve to their base model."
    );
}

fn price_json(p: Option<Price>) -> Value {
    p.map_or(Value::Null, |p| Value::String(p.usd_per_1m()))
}

fn entry_json(m: &ModelEntry) -> Value {
    json!({
        "id": m.id,
        "family": catalog::family_name(m.family),
        "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens,
        "input_per_1m": m.input.usd_per_1m(),
        "cached_input_per_1m": price_json(m.cached_input),
        "output_per_1m": price_json(m.output),
        "latency": m.latency,
        "capabilities": m.capabilities,
        "best_use": m.best_use,
        "prices_checked": m.prices_checked,
    })
}

fn cost(catalog: &Catalog, args: &CostArgs, as_json: bool) -> anyhow::Result<()> {
    let Some(entry) = catalog.get(&args.model) else {
        bail!(
            "unknown model {:?}; the catalog knows: {} (add others with [[models]] in tollgate.toml)",
            args.model,
            catalog.ids().join(", ")
        );
    };
    if args.cached > args.input {
        bail!(
            "--cached ({}) cannot exceed --input ({}): input counts cached tokens too",
            args.cached,
            args.input
        );
    }
    let tokens = BilledTokens {
        input: args.input,
        cached: args.cached,
        output: args.output,
    };
    let total = entry.cost(tokens);
    if as_json {
        let out = json!({
            "model": args.model,
            "catalog_id": entry.id,
            "input_tokens": args.input,
            "cached_tokens": args.cached,
            "output_tokens": args.output,
            "cost_usd": total.to_string(),
            "cost_usd_nanos": total.usd_nanos(),
            "price_unit": "USD per 1M tokens",
            "input_per_1m": entry.input.usd_per_1m(),
            "cached_input_per_1m": price_json(entry.cached_input),
            "output_per_1m": price_json(entry.output),
            "prices_checked": entry.prices_checked,
        });
        println!("{out}");
        return Ok(());
    }
    let via = if entry.id == args.model {
        String::new()
    } else {
        format!(" (priced as {})", entry.id)
    };
    println!(
        "{}{via}: {} input ({} cached) + {} output tokens = ${}",
        args.model, args.input, args.cached, args.output, total
    );
    println!(
        "prices per 1M tokens: input {}, cached input {}, output {} (checked {})",
        dollars(Some(entry.input)),
        dollars(entry.cached_input.or(Some(entry.input))),
        dollars(entry.output),
        entry.prices_checked.as_deref().unwrap_or("-")
    );
    Ok(())
}
