//! `hutchd` with no subcommand: the daemon's main loop.
//!
//! Order of start-up (each step says why it comes where it does):
//! 1. load and validate the config (a bad config never forks anything);
//! 2. probe the host against the configured minimum (fail closed);
//! 3. fork the sandbox launcher, while the process is still single-threaded;
//! 4. build the tokio runtime (threads exist from here on);
//! 5. [`Daemon::open`]: database, recovery sweep, supervisor, enabled plugins;
//! 6. bind the control socket and serve it;
//! 7. `READY=1` to systemd, then the watchdog pings and the signal loop:
//!    SIGHUP reloads the config (a bad one is logged and ignored), SIGTERM
//!    and SIGINT shut down gracefully ([`Daemon::shutdown`]) and exit 0.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::daemon::{Daemon, DaemonOptions};

/// Runs the daemon until SIGTERM/SIGINT; returns the process exit status.
pub fn run(config_path: Option<PathBuf>) -> i32 {
    match run_inner(config_path) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hutchd: {e:#}");
            1
        }
    }
}

fn run_inner(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let report = hutch_sandbox::host::HostReport::probe(Path::new("/proc"), config.minimum())
        .context("probe host")?;
    if report.protection == hutch_sandbox::host::Protection::Insufficient {
        anyhow::bail!(
            "this host does not meet the configured minimum protection; see `hutchd check-host`"
        );
    }
    // Forked while this process has a single thread.
    let launcher =
        hutch_sandbox::launcher::Launcher::start_with(hutch_sandbox::launcher::LauncherConfig {
            pool_size: config.sandbox.spawn_pool,
        })
        .context("start sandbox launcher")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hutchd")
        .build()
        .context("start runtime")?;
    let path = config_path.filter(|p| p.exists()).or_else(|| {
        let d = PathBuf::from(crate::config::DEFAULT_CONFIG_PATH);
        d.exists().then_some(d)
    });
    rt.block_on(serve(config, path, launcher))
}

async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    launcher: hutch_sandbox::launcher::Launcher,
) -> anyhow::Result<()> {
    crate::control::apply_test_clock_from_env()?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let socket = config.paths.control_socket();
    let daemon = Daemon::open(
        DaemonOptions {
            config,
            config_path,
        },
        launcher,
    )
    .await?;
    let listener = match crate::control::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            daemon.shutdown().await;
            return Err(e.into());
        }
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::control::serve(
        daemon.clone(),
        listener,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "hutchd ready");
    notify(&format!(
        "READY=1\nSTATUS=running\nMAINPID={}",
        std::process::id()
    ));
    let watchdog = watchdog_interval();
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut failure = None;
    loop {
        tokio::select! {
            () = daemon.launcher_gone() => {
                tracing::error!("the sandbox launcher died; shutting down");
                failure = Some(anyhow::anyhow!("the sandbox launcher process died"));
                break;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                notify("RELOADING=1");
                match daemon.reload_config().await {
                    Ok(()) => tracing::info!("SIGHUP: config reloaded"),
                    Err(e) => tracing::error!("SIGHUP: keeping the running config: {e}"),
                }
                notify("READY=1");
            }
            _ = ping.tick(), if watchdog.is_some() => notify("WATCHDOG=1"),
        }
    }
    notify("STOPPING=1");
    let _ = stop_tx.send(true);
    daemon.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "control server"),
        Err(_) => tracing::warn!("control server did not stop in 5s"),
        _ => {}
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("hutchd stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Half the systemd watchdog period, if systemd asked for pings for us.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `msg` to `$NOTIFY_SOCKET` (sd_notify), if set. A datagram to a
/// path, or to an abstract socket when the name starts with `@`.
pub fn notify(msg: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = addr.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &a)?;
        } else {
            sock.send_to(msg.as_bytes(), Path::new(&addr))?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!(error = %e, "sd_notify");
    }
}
