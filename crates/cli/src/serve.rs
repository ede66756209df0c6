//! `tollgate serve`: run the gateway. With `--demo`, the built-in simulator runs
//! in-process as the upstream and a demo project and key are created (or reused), so a
//! newcomer sees tollgate work without a provider key.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tollgate_gateway::keys;
use tollgate_gateway::secret::{Secret, SecretRef};
use tollgate_gateway::Config;
use tollgate_store::{Role, Store};

use crate::state::{self, StateArgs};

/// Options of `tollgate serve`. Each has a `TOLLGATE_*` variable; flags win over
/// variables, variables over the config file, the file over the defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TOLLGATE_LISTEN")]
    listen: Option<String>,
    /// Base URL of the upstream API, including /v1 [default: https://api.openai.com/v1].
    #[arg(long, env = "TOLLGATE_UPSTREAM_URL")]
    upstream_url: Option<String>,
    /// Secret reference of the provider key: env:NAME, file:/path or exec:command
    /// [default: env:OPENAI_API_KEY].
    #[arg(long, env = "TOLLGATE_UPSTREAM_API_KEY", hide_env_values = true)]
    upstream_api_key: Option<String>,
    /// Redis for rate-limit counters shared by several replicas:
    /// redis://[:PASSWORD@]HOST[:PORT][/DB] [default: none, counters in memory].
    #[arg(long, env = "TOLLGATE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// The model the `default` alias names (over `[aliases] default` of the config)
    /// [default: gpt-4o-mini].
    #[arg(long, env = "OPENAI_MODEL")]
    default_model: Option<String>,
    /// Run against the built-in simulator with a demo project and key.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    state: StateArgs,
}

/// The demo project, environment and key name.
const DEMO_PROJECT: &str = "demo";
const DEMO_ENV: &str = "dev";
const DEMO_KEY_NAME: &str = "demo";
/// Where releases before this one kept the demo key's secret.
const LEGACY_DEMO_KEY_FILE: &str = "demo-key";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some((from, to)) = raise_open_files_limit() {
        tracing::info!(from, to, "raised the open-file limit to its hard limit");
    }
    let mut raw = args.state.file_config()?;
    args.state.apply(&mut raw)?;
    // An empty variable is unset: it does not blank what the config file says.
    if let Some(listen) = state::given(&args.listen) {
        raw.listen = Some(listen.to_owned());
    }
    if let Some(url) = state::given(&args.upstream_url) {
        raw.upstream.url = Some(url.to_owned());
    }
    if let Some(reference) = state::given(&args.upstream_api_key) {
        raw.upstream.api_key = Some(reference.to_owned());
    }
    if let Some(url) = state::given(&args.redis_url) {
        raw.redis.url = Some(url.to_owned());
    }
    if let Some(model) = state::given(&args.default_model) {
        raw.aliases
            .insert("default".into(), model.trim().to_owned());
    }

    // In demo mode the simulator is the upstream and holds a key made up right here.
    let demo = if args.demo {
        let provider_key = format!(
            "sk-demo-{}",
            keys::mint("x", "x", Role::Member, None, 0).secret
        );
        let sim = tollgate_simulator::spawn(tollgate_simulator::SimConfig {
            api_keys: Some(vec![provider_key.clone()]),
            ..Default::default()
        })
        .await
        .context("starting the built-in simulator")?;
        raw.upstream.url = Some(sim.base_url());
        Some((sim, Secret::new(provider_key)))
    } else {
        None
    };

    let cap_set = raw.server.max_connections.is_some();
    let mut config =
        Config::try_from(raw).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    if let Some(files) = open_files_limit() {
        let fitted = connections_within(config.max_connections, files);
        if fitted < config.max_connections {
            // A cap someone chose is worth a warning; the default fitted is not.
            let (configured, open_files) = (config.max_connections, files);
            let message = "server.max_connections lowered to fit the open-file limit (raise \
                           it with `ulimit -Hn` or LimitNOFILE=)";
            if cap_set {
                tracing::warn!(configured, open_files, lowered_to = fitted, "{message}");
            } else {
                tracing::info!(configured, open_files, lowered_to = fitted, "{message}");
            }
            config.max_connections = fitted;
        }
    }
    let provider_key = match &demo {
        Some((_, key)) => key.clone(),
        None => resolve_provider_key(&config.upstream.api_key)?,
    };
    let store = state::open_store(&config.data_dir, config.database_url.as_deref()).await?;
    // Bound first: a second `serve --demo` that cannot listen (the first holds the
    // port) must not revoke the first one's key on its way out.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let demo_key = match &demo {
        Some(_) => Some(demo_key(&store, &config.data_dir).await?),
        None => None,
    };

    // Where `tollgate usage` finds this server's records (a password in a database
    // URL is not printed).
    let store_arg = match &config.database_url {
        Some(url) => format!(
            "--database-url '{}'",
            tollgate_gateway::config::redact_url(url)
        ),
        None => format!("--data-dir {}", config.data_dir.display()),
    };
    let addr = listener.local_addr()?;
    let state_at = match &config.database_url {
        Some(_) => "database URL".to_owned(),
        None => config.data_dir.display().to_string(),
    };
    let limits_at = config
        .redis
        .url
        .as_ref()
        .map_or_else(|| "memory".to_owned(), |u| u.redacted());
    let upstream_at = config.upstream.url.clone();
    // Announced once everything that can fail at start has succeeded.
    let ready = || {
        println!("listening on http://{addr}");
        if let Some(key) = &demo_key {
            print_demo_banner(&addr.to_string(), key, &store_arg);
        }
        tracing::info!(upstream = %upstream_at, state = %state_at, limits = %limits_at, "tollgate serving");
    };
    let report = tollgate_gateway::serve_announced(
        listener,
        config,
        store,
        provider_key,
        shutdown_then_force(),
        ready,
    )
    .await
    .context("gateway failed")?;
    tracing::info!(
        usage_records = report.usage_records_written,
        "tollgate stopped"
    );
    if let Some((sim, _)) = demo {
        let _ = sim.shutdown().await;
    }
    Ok(())
}

/// Resolves on the first SIGINT/SIGTERM, starting the graceful shutdown; a second
/// one ends the process at once (exit status 130), for when the graceful shutdown
/// cannot finish — its usage writer retrying against a store that is down, say. What
/// was not written is said in the log.
async fn shutdown_then_force() {
    crate::shutdown_signal().await;
    tracing::info!("shutting down gracefully; a second signal stops at once");
    tokio::spawn(async {
        crate::shutdown_signal().await;
        tracing::error!(
            "second signal: stopping now; usage records not yet written are lost, and \
             calls still running are cut"
        );
        std::process::exit(130);
    });
}

fn resolve_provider_key(reference: &SecretRef) -> anyhow::Result<Secret> {
    reference.resolve().map_err(|e| {
        anyhow::anyhow!(
            "cannot read the provider key from {reference}: {e}.\n\
             Set it (e.g. export OPENAI_API_KEY=…), point --upstream-api-key at another \
             reference (env:NAME, file:/path, exec:command), or try `tollgate serve --demo`."
        )
    })
}

/// Mints the demo key: a new one at each start, printed once and stored only as its
/// digest like every key. Earlier demo keys are revoked, so a demo's key never outlives
/// the next start, and a data directory later served against a real provider holds no
/// secret a reader could use. (Earlier versions kept the demo key in a
/// `demo-key` file to reuse it; the file is removed.)
async fn demo_key(store: &Store, data_dir: &Path) -> anyhow::Result<String> {
    store.ensure_project(DEMO_PROJECT).await?;
    let now = state::now_ms();
    for earlier in store.list_keys().await? {
        let is_demo = earlier.project == DEMO_PROJECT
            && earlier.env == DEMO_ENV
            && earlier.name.as_deref() == Some(DEMO_KEY_NAME);
        if is_demo && earlier.revoked_at_ms.is_none() {
            let reason = Some("replaced by a new `serve --demo`");
            store.revoke_key(&earlier.id, reason, now).await?;
        }
    }
    match std::fs::remove_file(data_dir.join(LEGACY_DEMO_KEY_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, "cannot remove the old demo-key file");
        }
        _ => {}
    }
    let minted = keys::mint(
        DEMO_PROJECT,
        DEMO_ENV,
        Role::Member,
        Some(DEMO_KEY_NAME.into()),
        now,
    );
    store.insert_key(&minted.record).await?;
    Ok(minted.secret)
}

fn print_demo_banner(addr: &str, key: &str, store_arg: &str) {
    // A reader of stdout that went away (a script that read the key and closed the
    // pipe) must not stop the server: println! would panic on the broken pipe.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout().lock(),
        r#"
tollgate demo: the built-in simulator is the upstream; no provider key needed.

  API key:  {key}
  Base URL: http://{addr}/v1

Try it:

  curl http://{addr}/v1/responses \
    -H "Authorization: Bearer {key}" \
    -H "Content-Type: application/json" \
    -d '{{"model": "gpt-4o-mini", "input": "Say hello in five words.", "max_output_tokens": 64}}'

Or from Python (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="http://{addr}/v1", api_key="{key}")
  r = client.responses.create(model="gpt-4o-mini", input="Say hello in five words.")
  print(r.output_text, r.usage)

Usage so far: tollgate usage {store_arg}. Stop with Ctrl-C."#
    );
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: each caller's connection takes a descriptor and each
/// upstream connection another, and the soft limit most systems start a process with
/// (1,024) would have the gateway refuse connections at about a thousand callers while
/// the hard limit allows far more. Returns the limits before and after when it raised
/// it; an unlimited hard limit raises it to 1,048,576 (Linux's usual `nr_open`).
#[cfg(unix)]
fn raise_open_files_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current?;
    let target = limit.maximum.unwrap_or(1 << 20);
    if soft >= target {
        return None;
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some((soft, target)),
        Err(e) => {
            tracing::warn!(error = %e, soft, "could not raise the open-file limit");
            None
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> Option<(u64, u64)> {
    None
}

/// The soft limit on open files, if there is one.
#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// Descriptors kept aside from client and upstream connections: the store's files, the
/// listener, Redis, the blocking pool's files, an upstream pool's idle connections.
const RESERVED_FILES: u64 = 256;

/// The most client connections that fit `open_files` descriptors: each caller's
/// connection takes one and its call's upstream connection another, so `cap` is
/// lowered to half of what the reserve leaves (at least one).
fn connections_within(cap: usize, open_files: u64) -> usize {
    let fit = open_files.saturating_sub(RESERVED_FILES) / 2;
    cap.min(usize::try_from(fit).unwrap_or(usize::MAX)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_lowered_to_fit_the_open_file_limit() {
        // Plenty of descriptors: the configured cap stands.
        assert_eq!(connections_within(10_000, 1 << 20), 10_000);
        // 1,024: a caller and its upstream call take two each, beside the reserve.
        assert_eq!(connections_within(10_000, 1_024), 384);
        assert_eq!(connections_within(100, 1_024), 100);
        // Too few to fit any: still one, so the gateway serves.
        assert_eq!(connections_within(10_000, 100), 1);
    }
}
