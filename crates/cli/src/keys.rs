//! `tollgate keys create|list|rotate|suspend|resume|revoke|set-lane|prune`: gateway keys over
//! their whole life, straight on the store. Every change is written to the audit log
//! (actor `cli:$USER`) in the same transaction. A running server notices changes
//! through the store's key change counter within `keys.refresh_interval_ms` (250 ms
//! by default).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tollgate_gateway::keys;
use tollgate_store::{KeyRecord, Lane, NewAudit, Role, Store, DEFAULT_MAX_KEY_AGE_MS};

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
        /// Lifetime: 30d, 12h, … [default: the project's maximum key age, 90d unless set]
        #[arg(long)]
        expires_in: Option<String>,
        /// The lane of its requests that send no x-tollgate-priority header:
        /// interactive, or batch (waits for capacity, leaves lanes.batch_reserve of
        /// every limit to interactive traffic).
        #[arg(long, default_value = "interactive")]
        lane: Lane,
        /// Print {"id","key","prefix","project","env","role","lane","expires_at_ms"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets), with expiry; keys due for rotation are marked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Issue a successor (same project, environment, role, name and the key's own
    /// limits, caps and budgets; printed once) and
    /// retire this key when the grace period ends.
    Rotate {
        /// The key id (key_…), as `keys list` shows it.
        id: String,
        /// How long the old key keeps working: 0s, 1h, 24h, …
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
    /// Suspend a key: servers refuse it (403 key_suspended) until it is resumed.
    Suspend {
        id: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a suspended key.
    Resume {
        id: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set a key's default lane (interactive or batch); running servers apply it within
    /// a second.
    SetLane {
        /// The key id (key_…), as `keys list` shows it.
        id: String,
        lane: Lane,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once, for good.
    Revoke {
        /// The key id (key_…), as `keys list` shows it.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke keys with no use in a window (never used and older than it, or last used
    /// before it).
    Prune {
        /// The window: 30d, 12h, …
        #[arg(long)]
        unused_for: String,
        /// Show what would be revoked; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    // Bad input is refused before the store is opened, so it cannot change it.
    match args.command {
        KeysCommand::Create {
            project,
            env,
            role,
            name,
            expires_in,
            lane,
            json,
        } => {
            let expires_in = expires_in
                .as_deref()
                .map(state::positive_span)
                .transpose()?;
            let store = args.state.open().await?;
            let key = NewKeyArgs {
                role,
                name,
                expires_in,
                lane,
            };
            create(&store, &project, &env, key, json).await
        }
        KeysCommand::SetLane { id, lane, json } => {
            set_lane(&args.state.open().await?, &id, lane, json).await
        }
        KeysCommand::List { json } => list(&args.state.open_existing().await?, json).await,
        KeysCommand::Rotate { id, grace, json } => {
            let grace_ms = state::parse_span_ms(&grace)?;
            rotate(&args.state.open().await?, &id, grace_ms, json).await
        }
        KeysCommand::Suspend { id, reason, json } => {
            let store = args.state.open().await?;
            change(&store, &id, Change::Suspend(&reason), json).await
        }
        KeysCommand::Resume { id, reason, json } => {
            let store = args.state.open().await?;
            change(&store, &id, Change::Resume(reason.as_deref()), json).await
        }
        KeysCommand::Revoke { id, reason, json } => {
            let store = args.state.open().await?;
            change(&store, &id, Change::Revoke(reason.as_deref()), json).await
        }
        KeysCommand::Prune {
            unused_for,
            dry_run,
            json,
        } => {
            let window = state::positive_span(&unused_for)?;
            prune(
                &args.state.open().await?,
                window,
                &unused_for,
                dry_run,
                json,
            )
            .await
        }
    }
}

/// A change of state that needs only the key id and a reason.
enum Change<'a> {
    Suspend(&'a str),
    Resume(Option<&'a str>),
    Revoke(Option<&'a str>),
}

async fn change(store: &Store, id: &str, change: Change<'_>, json: bool) -> anyhow::Result<()> {
    known(store, id).await?;
    let (now, actor) = (state::now_ms(), state::actor());
    let (action, changed, done, noop) = match change {
        Change::Suspend(reason) => (
            "suspend",
            store.suspend_key(id, Some(reason), now, &actor).await?,
            "Suspended. Running servers refuse it within a second; resume it with \
             `tollgate keys resume ID`.",
            "Already suspended.",
        ),
        Change::Resume(reason) => (
            "resume",
            store.resume_key(id, reason, now, &actor).await?,
            "Resumed. Running servers accept it again within a second.",
            "It was not suspended.",
        ),
        Change::Revoke(reason) => (
            "revoke",
            store.revoke_key_as(id, reason, now, &actor).await?,
            "Revoked. Running servers refuse it within a second.",
            "It was already revoked.",
        ),
    };
    if json {
        let out = serde_json::json!({ "id": id, "action": action, "changed": changed });
        println!("{out}");
    } else {
        println!("{id}: {}", if changed { done } else { noop });
    }
    Ok(())
}

/// What `keys create` asks for beside the project and environment.
struct NewKeyArgs {
    role: Role,
    name: Option<String>,
    expires_in: Option<i64>,
    lane: Lane,
}

async fn create(
    store: &Store,
    project: &str,
    env: &str,
    key: NewKeyArgs,
    json: bool,
) -> anyhow::Result<()> {
    let NewKeyArgs {
        role,
        name,
        expires_in,
        lane,
    } = key;
    // Checked before the project is created for it: a refused key changes nothing.
    tollgate_store::validate_env_name(env)?;
    let max_age = store
        .project_by_name(project)
        .await?
        .map_or(DEFAULT_MAX_KEY_AGE_MS, |p| p.effective_max_key_age_ms());
    let lifetime = expires_in.unwrap_or(max_age);
    if lifetime > max_age {
        anyhow::bail!(
            "--expires-in is beyond project {project:?}'s maximum key age ({}): ask for less, \
             or raise it with `tollgate projects set-max-key-age {project} DURATION`",
            state::format_span_ms(max_age)
        );
    }
    let actor = state::actor();
    store.ensure_project_as(project, &actor).await?;
    let now = state::now_ms();
    let mut minted = keys::mint(project, env, role, name, now);
    minted.record.expires_at_ms = now.saturating_add(lifetime);
    minted.record.lane = lane;
    let rec = store.insert_key_as(&minted.record, &actor).await?;
    if json {
        let out = serde_json::json!({
            "id": rec.id, "key": minted.secret, "prefix": rec.prefix,
            "project": rec.project, "env": rec.env, "role": rec.role, "lane": rec.lane,
            "expires_at_ms": rec.expires_at_ms,
        });
        println!("{out}");
    } else {
        println!(
            "Created key {} for {}/{} (role {}, {} lane), expiring {} UTC.",
            rec.id,
            rec.project,
            rec.env,
            rec.role,
            rec.lane,
            state::format_ms(rec.expires_at_ms)
        );
        print_secret(&minted.secret);
    }
    Ok(())
}

async fn set_lane(store: &Store, id: &str, lane: Lane, json: bool) -> anyhow::Result<()> {
    known(store, id).await?;
    let changed = store
        .set_key_lane(id, lane, state::now_ms(), &state::actor())
        .await?;
    if json {
        let out =
            serde_json::json!({ "id": id, "action": "lane", "changed": changed, "lane": lane });
        println!("{out}");
    } else if changed {
        println!("{id}: its default lane is now {lane}. Running servers apply it within a second.");
    } else {
        println!("{id}: its default lane was already {lane}.");
    }
    Ok(())
}

async fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let keys = store.list_keys().await?;
    let now = state::now_ms();
    if json {
        let rows: Vec<serde_json::Value> = keys.iter().map(|k| key_json(k, now)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_keys(&keys, now);
    }
    Ok(())
}

async fn rotate(store: &Store, id: &str, grace_ms: i64, json: bool) -> anyhow::Result<()> {
    let old = known(store, id).await?;
    let max_age = store
        .project_by_name(&old.project)
        .await?
        .map_or(DEFAULT_MAX_KEY_AGE_MS, |p| p.effective_max_key_age_ms());
    let now = state::now_ms();
    let minted = keys::successor(&old, max_age, now);
    let next = store
        .rotate_key(id, &minted.record, grace_ms, now, &state::actor())
        .await?;
    let retire_at = keys::stops_at(&old, grace_ms, now);
    let refused = keys::refused_now(&old, now);
    if json {
        let out = serde_json::json!({
            "id": next.id, "key": minted.secret, "prefix": next.prefix,
            "project": next.project, "env": next.env, "role": next.role,
            "expires_at_ms": next.expires_at_ms, "rotated": id, "old_key_retires_at_ms": retire_at,
            "old_key_refused": refused,
        });
        println!("{out}");
    } else {
        println!(
            "Rotated {id}: its successor is {} ({}/{}, role {}), expiring {} UTC.",
            next.id,
            next.project,
            next.env,
            next.role,
            state::format_ms(next.expires_at_ms)
        );
        if refused {
            println!(
                "{id} is refused already (suspended or expired); resumed, it would work \
                 until {} UTC at most.",
                state::format_ms(retire_at)
            );
        } else {
            println!(
                "{id} keeps working until {} UTC, then stops.",
                state::format_ms(retire_at)
            );
        }
        print_secret(&minted.secret);
    }
    Ok(())
}

async fn prune(
    store: &Store,
    window_ms: i64,
    window: &str,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let now = state::now_ms();
    let unused = store.keys_unused_since(now - window_ms).await?;
    let actor = state::actor();
    let reason = format!("unused for {window} (keys prune)");
    let mut revoked = Vec::new();
    if !dry_run {
        for k in &unused {
            if store
                .revoke_key_as(&k.id, Some(&reason), now, &actor)
                .await?
            {
                revoked.push(k.id.clone());
            }
        }
        store
            .insert_audit(&NewAudit {
                at_ms: now,
                actor: actor.actor.clone(),
                action: "keys.prune".into(),
                target: "*".into(),
                detail: serde_json::json!({ "unused_for": window, "revoked": revoked }).to_string(),
                source: actor.source.clone(),
            })
            .await?;
    }
    if json {
        let rows: Vec<serde_json::Value> = unused.iter().map(|k| key_json(k, now)).collect();
        let out = serde_json::json!({
            "dry_run": dry_run, "unused_for": window, "keys": rows, "revoked": revoked,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if unused.is_empty() {
        println!("No key has gone unused for {window}.");
        return Ok(());
    }
    print_keys(&unused, now);
    if dry_run {
        println!(
            "Would revoke {} key(s) unused for {window} (dry run: nothing changed).",
            unused.len()
        );
    } else {
        println!("Revoked {} key(s) unused for {window}.", revoked.len());
    }
    Ok(())
}

/// The key `id`, or a clear error naming it.
async fn known(store: &Store, id: &str) -> anyhow::Result<KeyRecord> {
    store
        .key_by_id(id)
        .await?
        .with_context(|| format!("unknown key id {id:?}: see `tollgate keys list`"))
}

fn print_secret(secret: &str) {
    println!();
    println!("  {secret}");
    println!();
    println!("This is the only time the key is shown: store it in your secret manager.");
}

fn key_json(k: &KeyRecord, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "prefix": k.prefix, "project": k.project, "env": k.env, "role": k.role,
        "name": k.name, "created_at_ms": k.created_at_ms, "last_used_at_ms": k.last_used_at_ms,
        "expires_at_ms": k.expires_at_ms, "state": k.state(now),
        "due_for_rotation": k.due_for_rotation(now),
        "revoked_at_ms": k.revoked_at_ms, "revoke_reason": k.revoke_reason,
        "suspended_at_ms": k.suspended_at_ms, "suspend_reason": k.suspend_reason,
        "rotated_to": k.rotated_to, "retire_at_ms": k.retire_at_ms, "lane": k.lane,
    })
}

fn print_keys(keys: &[KeyRecord], now: i64) {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let mut st = k.state(now).to_string();
            if k.due_for_rotation(now) {
                st.push_str(" (rotate soon)");
            }
            vec![
                k.id.clone(),
                format!("{}…", k.prefix),
                k.project.clone(),
                k.env.clone(),
                k.role.to_string(),
                k.lane.to_string(),
                state::format_ms(k.created_at_ms),
                k.last_used_at_ms
                    .map_or_else(|| "never".into(), state::format_ms),
                state::format_ms(k.expires_at_ms),
                st,
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
            "LANE",
            "CREATED (UTC)",
            "LAST USED (UTC)",
            "EXPIRES (UTC)",
            "STATE",
        ],
        &rows,
    );
}
