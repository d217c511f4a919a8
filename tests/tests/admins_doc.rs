//! Every `hutchctl` and `hutchd` command in `docs/admins.md` is a real one:
//! each command line of its shell blocks is run with `--help` appended, so
//! the subcommand path and every option name must exist (clap rejects an
//! unknown one before it reaches `--help`). Values are not checked.

use std::error::Error;
use std::process::Command;

use hutch_tests::daemon::sibling_bin;

/// Shell words of `line` (single/double quotes, `#` comments).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c == '#' && !in_word => break,
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

#[test]
fn every_command_in_the_admin_guide_exists() -> Result<(), Box<dyn Error>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admins.md"))?;
    let mut in_sh = false;
    let mut checked = 0;
    let mut bad = Vec::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        let w = words(line.trim());
        let Some(bin) = w.first().map(String::as_str) else {
            continue;
        };
        let command = line.trim().to_owned();
        if !in_sh && !line.contains("`hutchctl ") && !line.contains("`hutchd ") {
            continue;
        }
        // Inline `hutchctl ...` spans in prose are checked too.
        let cmds: Vec<Vec<String>> = if in_sh {
            if bin != "hutchctl" && bin != "hutchd" {
                continue;
            }
            vec![w]
        } else {
            line.split('`')
                .skip(1)
                .step_by(2)
                .filter(|s| s.starts_with("hutchctl ") || s.starts_with("hutchd "))
                .map(words)
                .collect()
        };
        for w in cmds {
            let exe = sibling_bin(&w[0]);
            let out = Command::new(&exe)
                .args(&w[1..])
                .arg("--help")
                .env_remove("HUTCH_CONTROL_SOCKET")
                .output()?;
            checked += 1;
            if !out.status.success() {
                bad.push(format!(
                    "{command}\n  -> {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} commands found in docs/admins.md"
    );
    assert!(
        bad.is_empty(),
        "commands that do not parse:\n{}",
        bad.join("\n")
    );
    Ok(())
}
