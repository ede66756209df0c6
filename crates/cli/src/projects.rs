//! `tollgate projects set-max-key-age`: project settings that govern keys, straight on
//! the store and written to the audit log.

use clap::{Args, Subcommand};

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
}

pub async fn run(args: ProjectsArgs) -> anyhow::Result<()> {
    match args.command {
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
