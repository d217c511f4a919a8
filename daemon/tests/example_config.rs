//! The example config shipped in `systemd/` must always parse.
#![allow(clippy::unwrap_used)]

#[test]
fn shipped_example_config_parses_to_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/hutchd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = hutch_daemon::config::Config::parse(&text, &path).unwrap();
    assert_eq!(config, hutch_daemon::config::Config::default());
}
