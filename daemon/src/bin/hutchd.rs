//! `hutchd`: the Hutch daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hutch_daemon::{check_host, config::Config};
use hutch_sandbox::host::{HostReport, Protection};

/// Hutch: run untrusted native plugins in a sandbox, with one audited door out.
#[derive(Debug, Parser)]
#[command(name = "hutchd", version)]
struct Cli {
    /// Daemon config file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report kernel support and the protection Hutch can give on this host;
    /// exits 1 when the configured minimum is not met.
    CheckHost {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutchd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Some(Command::CheckHost { json }) => {
            let report = HostReport::probe(std::path::Path::new("/proc"), config.minimum())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_host::render(&report));
            }
            Ok(if report.protection == Protection::Insufficient {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        None => {
            anyhow::bail!("the daemon itself is not built yet; try `hutchd check-host`")
        }
    }
}
