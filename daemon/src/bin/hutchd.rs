//! `hutchd`: the Hutch daemon.
//!
//! Thin: parses the command line and calls into `hutch_daemon`. The sandbox
//! launcher is forked first thing, before any thread or runtime exists
//! (`hutch_daemon::service` for the daemon, `run_try` for `try`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hutch_daemon::{check_host, config::Config};
use hutch_sandbox::host::{HostReport, Protection};

/// mimalloc instead of glibc's malloc: a plugin call allocates and frees
/// dozens of small buffers across the runtime's threads (HTTP/2 frames,
/// protobuf messages, audit events, SQL arguments), where glibc's arena
/// locking and chunk consolidation cost ~10 % of the daemon's CPU; see
/// docs/api.md, "Session 6".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hutch: run untrusted native plugins in a sandbox, with one audited door out.
#[derive(Debug, Parser)]
#[command(name = "hutchd", version)]
struct Cli {
    /// Daemon config file (default /etc/hutch/hutchd.toml; a missing default
    /// file means built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the config and exit (0 valid, 1 invalid) without starting.
    #[arg(long)]
    check: bool,
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
    /// Run one plugin once in the foreground under the production sandbox.
    Try(Box<hutch_daemon::try_cmd::TryArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs at info (plugin output is forwarded at info); the
    // one-shot commands only warn.
    let default_level = if cli.command.is_none() {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUTCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    if cli.check {
        return match Config::load(cli.config.as_deref()) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hutchd: {e}");
                ExitCode::from(1)
            }
        };
    }
    match cli.command {
        Some(Command::Try(args)) => ExitCode::from(clamp(run_try(&args))),
        Some(Command::CheckHost { json }) => match check_host_cmd(cli.config, json) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("hutchd: {e:#}");
                ExitCode::from(1)
            }
        },
        // The launcher is forked inside, before the runtime starts.
        None => ExitCode::from(clamp(hutch_daemon::service::run(cli.config))),
    }
}

fn clamp(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn check_host_cmd(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
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

fn run_try(args: &hutch_daemon::try_cmd::TryArgs) -> i32 {
    // Forked before any thread exists: the launcher must be single-threaded.
    // No pool: try spawns once, pre-warmed stubs would only be torn down.
    let launcher = match hutch_sandbox::launcher::Launcher::start_with(
        hutch_sandbox::launcher::LauncherConfig { pool_size: 0 },
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hutchd try: {e}");
            return 1;
        }
    };
    match hutch_daemon::try_cmd::run(launcher, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutchd try: {e}");
            e.exit_code()
        }
    }
}
