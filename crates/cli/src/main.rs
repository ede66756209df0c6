//! `tollgate`: the command-line entry point. One subcommand per module; this file only
//! parses arguments, sets up logging (to stderr: stdout belongs to the commands) and
//! dispatches.

mod audit;
mod budgets;
mod caps;
mod config_cmd;
mod keys;
mod limits;
mod mock;
mod models;
mod projects;
mod serve;
mod state;
mod usage;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// tollgate: the trusted gateway between applications and the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (`--demo`: against the built-in simulator, with a demo key).
    Serve(serve::ServeArgs),
    /// Gateway keys over their life: create, list, rotate, suspend, resume, revoke, prune.
    Keys(keys::KeysArgs),
    /// Project settings that govern keys.
    Projects(projects::ProjectsArgs),
    /// Rate limits (requests and tokens per minute) per project, env, key and model.
    Limits(limits::LimitsArgs),
    /// Spend budgets in USD per day and month per project, env or key: set, show, clear.
    Budgets(budgets::BudgetsArgs),
    /// Output caps (max output tokens, a default, a temperature range) per project or key.
    Caps(caps::CapsArgs),
    /// The model catalog (prices per 1M tokens) and `models cost` estimates.
    Models(models::ModelsArgs),
    /// The audit log of key and project changes.
    Audit(audit::AuditArgs),
    /// Usage totals from the records of every proxied call.
    Usage(usage::UsageArgs),
    /// Validate a configuration file.
    Config(config_cmd::ConfigArgs),
    /// Run the OpenAI-compatible simulator (see docs/simulator.md).
    Mock(mock::MockArgs),
}

/// The process's allocator (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    state::note_flag_sources(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let done = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Keys(args) => keys::run(args).await,
        Command::Projects(args) => projects::run(args).await,
        Command::Limits(args) => limits::run(args).await,
        Command::Caps(args) => caps::run(args).await,
        Command::Budgets(args) => budgets::run(args).await,
        Command::Models(args) => models::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Config(args) => config_cmd::run(args),
        Command::Mock(args) => mock::run(args).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What went wrong and why, on one line; never a backtrace, which
            // `RUST_BACKTRACE=1` in an operator's shell would otherwise add.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
