//! `tollgate config check FILE`: validate a configuration without starting anything.
//! Every problem is reported with its dotted path; the exit status is non-zero when
//! there is one.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tollgate_gateway::Config;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a tollgate.toml.
    Check {
        /// The file to check (or give it as --config, as `serve` takes it).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The file to check, as `serve --config` names it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the result as JSON (problems still go to stderr with a non-zero exit).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file, config, json } => {
            let Some(file) = file.or(config) else {
                anyhow::bail!("name the file to check: tollgate config check FILE");
            };
            let raw = crate::state::read_config(&file)?;
            let config = Config::try_from(raw).map_err(|e| {
                anyhow::anyhow!("invalid configuration in {}:\n{e}", file.display())
            })?;
            if json {
                let out = serde_json::json!({
                    "file": file.display().to_string(), "ok": true,
                    "listen": config.listen.to_string(), "upstream": config.upstream.url,
                    "provider_key_from": config.upstream.api_key.to_string(),
                });
                println!("{out}");
                return Ok(());
            }
            println!(
                "{}: ok (listen {}, upstream {}, provider key from {})",
                file.display(),
                config.listen,
                config.upstream.url,
                config.upstream.api_key
            );
            Ok(())
        }
    }
}
