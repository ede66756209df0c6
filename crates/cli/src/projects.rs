//! `tollgate projects create|list|show|delete|set-credential|set-max-key-age|
//! set-anomaly-auto-suspend`: projects, their environments, provider credentials and
//! settings, straight on the store and written to the audit log. Names starting with
//! `_` are reserved (`_gateway` holds the gateway-wide admin keys). Credentials are secret references (`env:NAME`, `file:PATH`,
//! `exec:CMD`) the server resolves; the CLI never reads or prints a secret value.

use clap::{Args, Subcommand, ValueEnum};
use tollgate_store::NewProject;

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct ProjectsArgs {
    #[command(subcommand)]
    command: ProjectsCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Subcommand)]
enum ProjectsCommand {
    /// Create a project, optionally with its default provider credential.
    Create {
        /// The project's name (lowercase letters, digits, '-', '_').
        name: String,
        /// A secret reference for the provider key: env:NAME, file:PATH or exec:CMD.
        #[arg(long = "upstream-api-key", value_name = "REF")]
        upstream_api_key: Option<String>,
        /// Suspend the project's keys flagged by anomaly detection (`default`: follow
        /// the gateway's `anomaly.auto_suspend`).
        #[arg(long = "anomaly-auto-suspend", value_enum, default_value_t = Switch::Default)]
        anomaly_auto_suspend: Switch,
        #[arg(long)]
        json: bool,
    },
    /// List projects with their number of keys that are not revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a project: its environments, their credential references and keys.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a project and its environments (refused while it has keys that are not
    /// revoked).
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set or clear the provider credential of a project (its default) or of one of
    /// its environments.
    SetCredential {
        name: String,
        /// The environment; without it, the project's default is set.
        #[arg(long)]
        env: Option<String>,
        /// A secret reference: env:NAME, file:PATH or exec:CMD.
        #[arg(
            long = "ref",
            value_name = "REF",
            required_unless_present = "clear",
            conflicts_with = "clear"
        )]
        reference: Option<String>,
        /// Clear it (fall back to the project default, then the global one).
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set the longest lifetime of the project's new keys (30d, 12h, …; `default` for
    /// 90d). Existing keys keep their expiry.
    SetMaxKeyAge {
        /// The project's name.
        name: String,
        /// 30d, 12h, … or `default`.
        age: String,
        #[arg(long)]
        json: bool,
    },
    /// Choose whether anomaly detection suspends the project's flagged keys: on, off,
    /// or default (the gateway's `anomaly.auto_suspend`). Running servers apply it
    /// within a second.
    SetAnomalyAutoSuspend {
        /// The project's name.
        name: String,
        #[arg(value_enum)]
        value: Switch,
        #[arg(long)]
        json: bool,
    },
}

/// A per-project on/off choice that may defer to the gateway's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
    /// Follow the gateway's configuration.
    Default,
}

impl Switch {
    fn choice(self) -> Option<bool> {
        match self {
            Self::On => Some(true),
            Self::Off => Some(false),
            Self::Default => None,
        }
    }
}

pub async fn run(args: ProjectsArgs) -> anyhow::Result<()> {
    match args.command {
        ProjectsCommand::Create {
            name,
            upstream_api_key,
            anomaly_auto_suspend,
            json,
        } => {
            let store = args.state.open().await?;
            let settings = NewProject {
                upstream_api_key,
                max_key_age_ms: None,
                anomaly_auto_suspend: anomaly_auto_suspend.choice(),
            };
            let p = store
                .create_project_with(&name, &settings, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!(
                    "Created project {} (provider credential: {}; anomaly auto-suspend: {}).",
                    p.name,
                    credential_label(p.upstream_api_key.as_deref(), "global default"),
                    auto_suspend_label(p.anomaly_auto_suspend)
                );
            }
            Ok(())
        }
        ProjectsCommand::List { json } => {
            let store = args.state.open().await?;
            let list = store.list_projects().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.project.name.clone(),
                            p.active_keys.to_string(),
                            credential_label(p.project.upstream_api_key.as_deref(), "-"),
                            auto_suspend_label(p.project.anomaly_auto_suspend).to_owned(),
                            state::format_ms(p.project.created_at_ms),
                        ]
                    })
                    .collect();
                state::print_table(
                    &["PROJECT", "KEYS", "CREDENTIAL", "AUTO-SUSPEND", "CREATED"],
                    &rows,
                );
            }
            Ok(())
        }
        ProjectsCommand::Show { name, json } => {
            let store = args.state.open().await?;
            let d = store.project_detail(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                let default = credential_label(d.project.upstream_api_key.as_deref(), "-");
                println!(
                    "Project {}: {} key(s) not revoked",
                    d.project.name, d.active_keys
                );
                println!("Default provider credential: {default}");
                println!(
                    "Maximum key age: {}",
                    state::format_span_ms(d.project.effective_max_key_age_ms())
                );
                println!(
                    "Anomaly auto-suspend: {}",
                    auto_suspend_label(d.project.anomaly_auto_suspend)
                );
                println!();
                let rows: Vec<Vec<String>> = d
                    .envs
                    .iter()
                    .map(|e| {
                        let used = match (&e.upstream_api_key, &d.project.upstream_api_key) {
                            (Some(r), _) => r.clone(),
                            (None, Some(r)) => format!("{r} (project default)"),
                            (None, None) => "(global default)".to_owned(),
                        };
                        vec![e.env.clone(), e.active_keys.to_string(), used]
                    })
                    .collect();
                state::print_table(&["ENV", "KEYS", "CREDENTIAL"], &rows);
            }
            Ok(())
        }
        ProjectsCommand::Delete { name, json } => {
            let store = args.state.open().await?;
            store
                .delete_project(&name, state::now_ms(), &state::actor())
                .await?;
            if json {
                println!("{}", serde_json::json!({ "name": name, "deleted": true }));
            } else {
                println!("Deleted project {name}.");
            }
            Ok(())
        }
        ProjectsCommand::SetCredential {
            name,
            env,
            reference,
            clear,
            json,
        } => {
            let reference = if clear { None } else { reference };
            let store = args.state.open().await?;
            let (now, actor) = (state::now_ms(), state::actor());
            match &env {
                Some(env) => {
                    store
                        .set_env_credential(&name, env, reference.as_deref(), now, &actor)
                        .await?
                }
                None => {
                    store
                        .set_project_credential(&name, reference.as_deref(), now, &actor)
                        .await?;
                }
            }
            if json {
                let out = serde_json::json!({
                    "name": name, "env": env, "upstream_api_key": reference,
                });
                println!("{out}");
            } else {
                let scope = env.map_or_else(
                    || format!("project {name} (default)"),
                    |e| format!("{name}/{e}"),
                );
                match reference {
                    Some(r) => println!("Provider credential of {scope}: {r}"),
                    None => println!("Provider credential of {scope} cleared."),
                }
            }
            Ok(())
        }
        ProjectsCommand::SetAnomalyAutoSuspend { name, value, json } => {
            set_anomaly_auto_suspend(&args.state, &name, value, json).await
        }
        ProjectsCommand::SetMaxKeyAge { name, age, json } => {
            let age_ms = if age == "default" {
                None
            } else {
                let ms = state::parse_span_ms(&age)?;
                anyhow::ensure!(ms > 0, "{age:?} must be longer than zero");
                Some(ms)
            };
            let store = args.state.open().await?;
            if store.project_by_name(&name).await?.is_none() {
                anyhow::bail!("unknown project {name:?}");
            }
            let p = store
                .set_project_max_key_age(&name, age_ms, state::now_ms(), &state::actor())
                .await?;
            let effective = p.effective_max_key_age_ms();
            if json {
                let out = serde_json::json!({
                    "name": p.name, "max_key_age_ms": p.max_key_age_ms,
                    "effective_max_key_age_ms": effective,
                });
                println!("{out}");
            } else {
                println!(
                    "Project {}: new keys live at most {}{}.",
                    p.name,
                    state::format_span_ms(effective),
                    if p.max_key_age_ms.is_none() {
                        " (the default)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}

/// A project's auto-suspend choice as shown to humans.
fn auto_suspend_label(choice: Option<bool>) -> &'static str {
    match choice {
        Some(true) => "on",
        Some(false) => "off",
        None => "gateway default",
    }
}

/// `projects set-anomaly-auto-suspend`.
async fn set_anomaly_auto_suspend(
    state: &StateArgs,
    name: &str,
    value: Switch,
    json: bool,
) -> anyhow::Result<()> {
    let store = state.open().await?;
    if store.project_by_name(name).await?.is_none() {
        anyhow::bail!("unknown project {name:?}");
    }
    let p = store
        .set_project_anomaly_auto_suspend(name, value.choice(), state::now_ms(), &state::actor())
        .await?;
    if json {
        let out = serde_json::json!({
            "name": p.name, "anomaly_auto_suspend": p.anomaly_auto_suspend,
        });
        println!("{out}");
    } else {
        println!(
            "Project {}: anomaly auto-suspend {}.",
            p.name,
            auto_suspend_label(p.anomaly_auto_suspend)
        );
    }
    Ok(())
}

/// A credential reference as shown to humans (the reference, never a value).
fn credential_label(reference: Option<&str>, unset: &str) -> String {
    reference.unwrap_or(unset).to_owned()
}
