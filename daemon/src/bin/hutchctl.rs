//! `hutchctl`: the admin and user CLI over hutchd's control socket.
//!
//! Thin: everything is in `hutch_daemon::cli`.

fn main() -> std::process::ExitCode {
    hutch_daemon::cli::main()
}
