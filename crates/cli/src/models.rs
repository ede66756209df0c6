//! `tollgate models`: the model catalog as a cheat sheet (prices in USD per 1M tokens),
//! and `tollgate models cost`: what a request of given token counts would cost. Both
//! read the built-in catalog with the config file's `[[models]]` entries applied and
//! the store's entries over those (when there is a store: a data directory with a
//! database, or a database URL).
//!
//! `tollgate models set ID …` and `tollgate models remove ID`: catalog entries kept in
//! the store (store > config > built-in, whole entries by id), audited; running
//! servers use them for context-window checks, costs and budgets within
//! `keys.refresh_interval_ms`.
//!
//! `tollgate models alias set|unset|list` and `tollgate models allow|deny`, `models
//! access show`: a project's aliases and its environments' access lists, straight on
//! the store and audited. Running servers pick a change up within
//! `keys.refresh_interval_ms` (they poll the store's `limits_version`).

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_gateway::catalog::{
    self, BilledTokens, Capability, Catalog, Latency, ModelEntry, Price, RawModel,
};
use tollgate_gateway::config::RawConfig;
use tollgate_gateway::Config;
use tollgate_store::{AccessKind, Store};

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The config file (its `[[models]]` and `[aliases]`) and the store.
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Estimate what a request costs, from its token counts.
    Cost(CostArgs),
    /// A project's model aliases (`fast`, `smart`, … or its own).
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Set the models an environment (or, without --env, every environment) of a
    /// project may use: only these. Replaces the list; --clear removes it.
    Allow(AccessArgs),
    /// Set the models an environment (or every environment) of a project may not
    /// use. Replaces the list; --clear removes it.
    Deny(AccessArgs),
    /// Show the access lists.
    #[command(subcommand)]
    Access(AccessCommand),
    /// Add or replace a catalog entry in the store (over the config's and the
    /// built-in entry of that id). Prices in USD per 1M tokens.
    Set(SetArgs),
    /// Remove a catalog entry from the store (the config's or built-in entry of that
    /// id, if any, applies again).
    Remove {
        /// The model id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct SetArgs {
    /// The model id, as requests name it (e.g. llama3.1:8b).
    id: String,
    /// Input plus output tokens.
    #[arg(long)]
    context_window: u64,
    /// The most output tokens (omit for models that produce none).
    #[arg(long)]
    max_output: Option<u64>,
    /// USD per 1M input tokens (at most 3 decimals: 0.075).
    #[arg(long)]
    input_price: f64,
    /// USD per 1M cached input tokens [default: the input price].
    #[arg(long)]
    cached_input_price: Option<f64>,
    /// USD per 1M output tokens (omit for models that produce none).
    #[arg(long)]
    output_price: Option<f64>,
    /// Tokenizer family: o200k_base or cl100k_base [default: guessed from the id].
    #[arg(long)]
    family: Option<String>,
    /// fast, medium or slow [default: medium].
    #[arg(long)]
    latency_class: Option<String>,
    /// Comma-separated: text, vision, audio, tools, json_schema, reasoning,
    /// embeddings, moderation [default: text].
    #[arg(long, value_delimiter = ',')]
    capabilities: Vec<String>,
    /// One line: what to use it for.
    #[arg(long)]
    best_use: Option<String>,
    /// When the prices were checked, YYYY-MM-DD.
    #[arg(long)]
    checked: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Make ALIAS name MODEL in a project (replacing a gateway alias of that name
    /// for the project).
    Set {
        #[arg(long)]
        project: String,
        alias: String,
        model: String,
    },
    /// Remove a project's alias (a gateway alias of that name applies again).
    Unset {
        #[arg(long)]
        project: String,
        alias: String,
    },
    /// The aliases a project sees (its own over the gateway's), or the gateway's.
    List {
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Debug, Args)]
struct AccessArgs {
    #[arg(long)]
    project: String,
    /// One environment; omitted: every environment of the project.
    #[arg(long)]
    env: Option<String>,
    /// Remove the list instead of setting it.
    #[arg(long, conflicts_with = "models")]
    clear: bool,
    /// Model ids; `gpt-4o` covers its dated snapshots, `gpt-4.1*` is a prefix.
    #[arg(required_unless_present = "clear")]
    models: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// The allow- and deny-lists of one project, or of all.
    Show {
        #[arg(long)]
        project: Option<String>,
    },
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

pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let raw = args.state.file_config()?;
    let has_store = has_store(&args.state, &raw)?;
    let config =
        Config::try_from(raw).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let json = args.json;
    match args.command {
        None => {
            list(&with_store(&config, &args.state, has_store).await?, json);
            Ok(())
        }
        Some(ModelsCommand::Cost(c)) => cost(
            &with_store(&config, &args.state, has_store).await?,
            &c,
            json,
        ),
        Some(ModelsCommand::Set(a)) => set_entry(&args.state.open().await?, a, json).await,
        Some(ModelsCommand::Remove { id }) => {
            remove_entry(&config, &args.state.open().await?, &id, json).await
        }
        Some(ModelsCommand::Alias(c)) => alias(&config, &args.state.open().await?, c, json).await,
        Some(ModelsCommand::Allow(a)) => {
            access(
                &config,
                &args.state.open().await?,
                AccessKind::Allow,
                a,
                json,
            )
            .await
        }
        Some(ModelsCommand::Deny(a)) => {
            access(
                &config,
                &args.state.open().await?,
                AccessKind::Deny,
                a,
                json,
            )
            .await
        }
        Some(ModelsCommand::Access(AccessCommand::Show { project })) => {
            access_show(&args.state.open().await?, project.as_deref(), json).await
        }
    }
}

/// Whether there is a store to read catalog entries from: a database URL, or a data
/// directory holding a database (listing the catalog never creates one).
fn has_store(state: &StateArgs, raw: &RawConfig) -> anyhow::Result<bool> {
    let mut raw = raw.clone();
    state.apply(&mut raw)?;
    Ok(crate::state::has_store(&raw))
}

/// The config's catalog with the store's entries over it.
async fn with_store(
    config: &Config,
    state: &StateArgs,
    has_store: bool,
) -> anyhow::Result<Catalog> {
    let mut c = config.catalog.clone();
    if has_store {
        let stored = state.open().await?.list_catalog_models().await?;
        c.apply(catalog::entries_from_store(&stored));
    }
    Ok(c)
}

async fn set_entry(store: &Store, a: SetArgs, json: bool) -> anyhow::Result<()> {
    let latency = a
        .latency_class
        .as_deref()
        .map(|l| {
            catalog::by_name::<Latency>(l)
                .map_err(|e| anyhow::anyhow!("--latency-class: {e} (fast, medium or slow)"))
        })
        .transpose()?;
    let capabilities = a
        .capabilities
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            catalog::by_name::<Capability>(c).map_err(|e| anyhow::anyhow!("--capabilities: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let raw = RawModel {
        id: a.id.clone(),
        family: a.family,
        context_window: Some(a.context_window),
        max_output_tokens: a.max_output,
        input_per_1m: a.input_price,
        cached_input_per_1m: a.cached_input_price,
        output_per_1m: a.output_price,
        latency,
        capabilities: (!capabilities.is_empty()).then_some(capabilities),
        best_use: a.best_use,
        prices_checked: a.checked,
    };
    let entry = catalog::validate_entry(&raw)
        .map_err(|e| anyhow::anyhow!("invalid catalog entry {:?}: {e}", a.id))?;
    let stored = store
        .set_catalog_model(
            &catalog::stored_from_entry(&entry),
            state::now_ms(),
            &state::actor(),
        )
        .await?;
    if json {
        let mut v = entry_json(&entry);
        v["from"] = json!("store");
        v["updated_at_ms"] = json!(stored.updated_at_ms);
        println!("{v}");
    } else {
        println!(
            "Catalog entry {} stored: context {}, input {}, output {} per 1M tokens. \
             Running servers use it within a second.",
            entry.id,
            a.context_window,
            dollars(Some(entry.input)),
            dollars(entry.output)
        );
    }
    Ok(())
}

async fn remove_entry(config: &Config, store: &Store, id: &str, json: bool) -> anyhow::Result<()> {
    let removed = store
        .remove_catalog_model(id, state::now_ms(), &state::actor())
        .await?;
    if !removed {
        bail!("the store has no catalog entry {id:?} (entries of the config or the built-in catalog are not removed here)");
    }
    let now = config
        .catalog
        .get(id)
        .filter(|e| e.id == id)
        .map(|_| "the config's or built-in entry applies again");
    if json {
        println!(
            "{}",
            json!({ "id": id, "removed": true, "fallback": now.is_some() })
        );
    } else {
        println!(
            "Catalog entry {id} removed from the store; {}.",
            now.unwrap_or("the model is no longer in the catalog")
        );
    }
    Ok(())
}

async fn alias(config: &Config, store: &Store, c: AliasCommand, json: bool) -> anyhow::Result<()> {
    match c {
        AliasCommand::Set {
            project,
            alias,
            model,
        } => {
            if config.catalog.get(&alias).is_some() {
                bail!("{alias:?} is a model of the catalog; an alias may not hide it");
            }
            if config.aliases.contains_key(&model) {
                bail!("{model:?} is itself an alias; aliases do not chain, name a model id");
            }
            let a = store
                .set_model_alias(&project, &alias, &model, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                println!("In project {project}, {alias} now names {model}.");
            }
            warn_unknown(config, &[model]);
        }
        AliasCommand::Unset { project, alias } => {
            let removed = store
                .unset_model_alias(&project, &alias, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!(
                    "{}",
                    json!({ "project": project, "alias": alias, "removed": removed })
                );
            } else if removed {
                println!("Alias {alias} of project {project} removed.");
            } else {
                bail!("project {project} has no alias {alias:?}; see `tollgate models alias list --project {project}`");
            }
        }
        AliasCommand::List { project } => {
            // The gateway's aliases (the project's own replace them), then the stored ones.
            let own = store.list_model_aliases(project.as_deref()).await?;
            let mut rows: Vec<(String, String, String)> = config
                .aliases
                .iter()
                .filter(|(a, _)| !own.iter().any(|o| &o.alias == *a && project.is_some()))
                .map(|(a, m)| (a.clone(), m.clone(), "gateway".to_owned()))
                .collect();
            rows.extend(own.into_iter().map(|o| (o.alias, o.model, o.project)));
            if json {
                let all: Vec<Value> = rows
                    .iter()
                    .map(|(a, m, from)| json!({ "alias": a, "model": m, "from": from }))
                    .collect();
                println!("{}", json!({ "project": project, "aliases": all }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(a, m, f)| vec![a, m, f]).collect();
            state::print_table(&["ALIAS", "MODEL", "FROM"], &rows);
        }
    }
    Ok(())
}

async fn access(
    config: &Config,
    store: &Store,
    kind: AccessKind,
    a: AccessArgs,
    json: bool,
) -> anyhow::Result<()> {
    let changed = store
        .set_model_access(
            &a.project,
            a.env.as_deref(),
            kind,
            &a.models,
            state::now_ms(),
            &state::actor(),
        )
        .await?;
    let env = a.env.as_deref().unwrap_or("*");
    if json {
        let out = json!({
            "project": a.project, "env": a.env, "kind": kind, "models": a.models, "changed": changed
        });
        println!("{out}");
    } else if a.clear {
        println!(
            "The {} list of {}/{env} is removed.",
            kind.as_str(),
            a.project
        );
    } else {
        println!(
            "The {} list of {}/{env} is now: {}.",
            kind.as_str(),
            a.project,
            a.models.join(", ")
        );
    }
    warn_unknown(config, &a.models);
    Ok(())
}

/// A model id the catalog does not know may be a typo: say so (on stderr).
fn warn_unknown(config: &Config, models: &[String]) {
    for m in models {
        if !m.ends_with('*') && config.catalog.get(m).is_none() {
            eprintln!(
                "note: {m:?} is not in the model catalog (`tollgate models`); check the spelling"
            );
        }
    }
}

async fn access_show(store: &Store, project: Option<&str>, json: bool) -> anyhow::Result<()> {
    let lists = store.list_model_access(project).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lists)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lists
        .iter()
        .map(|l| {
            vec![
                l.project.clone(),
                l.env.clone().unwrap_or_else(|| "*".into()),
                l.kind.as_str().to_owned(),
                l.models.join(", "),
                state::format_ms(l.updated_at_ms),
            ]
        })
        .collect();
    state::print_table(&["PROJECT", "ENV", "LIST", "MODELS", "UPDATED"], &rows);
    Ok(())
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
