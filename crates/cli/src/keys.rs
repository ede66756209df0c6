//! `tollgate keys create|list|revoke`: gateway keys, straight on the store. A running
//! server notices changes through the store's key change counter within
//! `keys.refresh_interval_ms` (250 ms by default).

use clap::{Args, Subcommand};
use tollgate_gateway::keys;
use tollgate_store::{KeyRecord, Role};

use crate::state::{self, StateArgs};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once and never stored.
    Create {
        /// Project the key belongs to (created if new).
        #[arg(long)]
        project: String,
        /// Environment: dev, staging, prod or any other name.
        #[arg(long)]
        env: String,
        /// admin, member (call models) or viewer (read-only).
        #[arg(long, default_value = "member")]
        role: Role,
        /// A label for humans.
        #[arg(long)]
        name: Option<String>,
        /// Print {"id","key","prefix","project","env","role"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key id (key_…), as `keys list` shows it.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let store = args.state.open().await?;
    match args.command {
        KeysCommand::Create {
            project,
            env,
            role,
            name,
            json,
        } => {
            store.ensure_project(&project).await?;
            let minted = keys::mint(&project, &env, role, name, state::now_ms());
            let rec = store.insert_key(&minted.record).await?;
            if json {
                let out = serde_json::json!({
                    "id": rec.id, "key": minted.secret, "prefix": rec.prefix,
                    "project": rec.project, "env": rec.env, "role": rec.role,
                });
                println!("{out}");
            } else {
                println!(
                    "Created key {} for {}/{} (role {}).",
                    rec.id, rec.project, rec.env, rec.role
                );
                println!();
                println!("  {}", minted.secret);
                println!();
                println!(
                    "This is the only time the key is shown: store it in your secret manager."
                );
            }
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keys.iter().map(key_json).collect::<Vec<_>>())?
                );
            } else {
                print_keys(&keys);
            }
        }
        KeysCommand::Revoke { id, reason } => {
            if store
                .revoke_key(&id, reason.as_deref(), state::now_ms())
                .await?
            {
                println!("Revoked {id}. Running servers refuse it within a second.");
            } else {
                println!("{id} was already revoked.");
            }
        }
    }
    Ok(())
}

fn key_json(k: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "prefix": k.prefix, "project": k.project, "env": k.env, "role": k.role,
        "name": k.name, "created_at_ms": k.created_at_ms, "last_used_at_ms": k.last_used_at_ms,
        "state": k.state(state::now_ms()), "revoked_at_ms": k.revoked_at_ms, "revoke_reason": k.revoke_reason,
    })
}

fn print_keys(keys: &[KeyRecord]) {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                format!("{}…", k.prefix),
                k.project.clone(),
                k.env.clone(),
                k.role.to_string(),
                state::format_ms(k.created_at_ms),
                k.last_used_at_ms
                    .map_or_else(|| "never".into(), state::format_ms),
                k.state(state::now_ms()).to_string(),
            ]
        })
        .collect();
    state::print_table(
        &[
            "ID",
            "PREFIX",
            "PROJECT",
            "ENV",
            "ROLE",
            "CREATED (UTC)",
            "LAST USED (UTC)",
            "STATE",
        ],
        &rows,
    );
}
