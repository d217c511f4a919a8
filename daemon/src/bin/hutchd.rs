//! `hutchd`: the Hutch daemon.
//!
//! Thin: parses the command line and calls into `hutch_daemon`. The sandbox
//! launcher is forked first thing, before any thread or runtime exists.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hutchd", version, about = "The Hutch daemon")]
struct Cli {
    /// Daemon config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/hutch/hutchd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one plugin once in the foreground under the production sandbox.
    Try(hutch_daemon::try_cmd::TryArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUTCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let code = match cli.command {
        Some(Command::Try(args)) => run_try(&args),
        None => {
            eprintln!(
                "hutchd: the daemon itself is not implemented yet (config {})",
                cli.config.display()
            );
            1
        }
    };
    std::process::exit(code);
}

fn run_try(args: &hutch_daemon::try_cmd::TryArgs) -> i32 {
    let mut launcher = match hutch_sandbox::launcher::Launcher::start() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hutchd try: {e}");
            return 1;
        }
    };
    let code = match hutch_daemon::try_cmd::run(&mut launcher, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutchd try: {e}");
            e.exit_code()
        }
    };
    drop(launcher);
    code
}
