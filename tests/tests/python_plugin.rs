//! Python plugins for real: an undeclared host import gets the documented
//! explanation, and the walkthrough of `docs/plugin-authors.md` runs as
//! written (its marked shell blocks, in order, against a real hutchd).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use hutch_tests::daemon::Hutchd;
use hutch_tests::python::{repo_root, vendor};
use hutch_tests::{TEMP_PREFIX, hutchd_path, privileged};

/// The marker in docs/plugin-authors.md before each shell block the
/// walkthrough test runs.
const MARKER: &str = "<!-- walkthrough -->";

fn docs() -> String {
    std::fs::read_to_string(repo_root().join("docs/plugin-authors.md")).unwrap()
}

/// The ```sh blocks that directly follow a walkthrough marker, in order.
fn walkthrough_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARKER {
            continue;
        }
        let fence = lines.by_ref().find(|l| !l.trim().is_empty());
        assert_eq!(
            fence.map(str::trim),
            Some("```sh"),
            "a walkthrough marker must be followed by a ```sh block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{name}-"))
        .tempdir()
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

const IMPORT_MANIFEST: &str = r#"id = "org.hutch.test.badimport"
version = "1.0.0"
exec = "/usr/bin/python3"
args = ["/plugin/main.py"]
"#;

#[test]
fn undeclared_host_import_gets_a_clear_documented_error() {
    if !privileged("undeclared_host_import_gets_a_clear_documented_error") {
        return;
    }
    // A package on the host, outside anything the sandbox shows. Not under
    // /tmp (a manifest may not declare it: the sandbox owns /tmp), nor under
    // the target dir (CI may check out below /tmp): /var/tmp.
    let host = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}hostpkg-"))
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let site = host.path().join("site-packages");
    std::fs::create_dir_all(site.join("labtools")).unwrap();
    std::fs::write(site.join("labtools/__init__.py"), "ANSWER = 42\n").unwrap();
    let main = format!(
        "import sys\nsys.path.insert(0, \"/plugin/vendor\")\nsys.path.insert(0, {site:?})\n\
         from hutch_plugin.imports import explain_imports\n\
         with explain_imports():\n    import labtools\nprint('imported', labtools.ANSWER)\n",
        site = site.display().to_string()
    );
    let plugin = temp_dir("badimport");
    std::fs::write(plugin.path().join("hutch-plugin.toml"), IMPORT_MANIFEST).unwrap();
    std::fs::write(plugin.path().join("main.py"), &main).unwrap();
    vendor(plugin.path()).unwrap();

    // On the host the same program imports it: the package is fine.
    let host_run = Command::new("/usr/bin/python3")
        .arg(plugin.path().join("main.py"))
        .env("PYTHONPATH", plugin.path().join("vendor"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&host_run.stdout).contains("imported 42"),
        "{host_run:?}"
    );

    // In the sandbox it is not there, and the plugin says why and what to do.
    let out = Command::new(hutchd_path())
        .arg("try")
        .arg(plugin.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exit status 3: {stderr}");
    assert!(
        stderr.contains("hutch: cannot import 'labtools': No module named 'labtools'"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "sys.path entries not visible in the sandbox: {}",
            site.display()
        )),
        "the undeclared path is named: {stderr}"
    );
    assert!(
        stderr.contains("[filesystem] read_only") && stderr.contains("pip install --target"),
        "the fixes are named: {stderr}"
    );
    assert!(
        stderr.contains("see docs/plugin-authors.md#imports-in-the-sandbox"),
        "{stderr}"
    );
    // ... and the documentation it points to exists and shows the message.
    let doc = docs();
    assert!(
        doc.contains("\n### Imports in the sandbox\n"),
        "the docs section exists"
    );
    assert!(
        doc.contains("hutch: cannot import 'skimage': No module named 'skimage'")
            && doc.contains("hutch: sys.path entries not visible in the sandbox:"),
        "the docs show the message"
    );

    // Declared read-only in the manifest, the same import works.
    std::fs::write(
        plugin.path().join("hutch-plugin.toml"),
        format!(
            "{IMPORT_MANIFEST}\n[filesystem]\nread_only = [{:?}]\n",
            site.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(hutchd_path())
        .arg("try")
        .arg(plugin.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 42"),
        "{out:?}"
    );
}

fn read_pgm(path: &Path) -> (usize, usize, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut parts = data.splitn(4, |b| *b == b'\n');
    assert_eq!(parts.next(), Some(&b"P5"[..]), "{}", path.display());
    let dims = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
    let mut wh = dims.split_whitespace().map(|v| v.parse::<usize>().unwrap());
    let (w, h) = (wh.next().unwrap(), wh.next().unwrap());
    assert_eq!(parts.next(), Some(&b"255"[..]));
    let pixels = parts.next().unwrap().to_vec();
    assert_eq!(pixels.len(), w * h, "{}", path.display());
    (w, h, pixels)
}

#[test]
fn plugin_authors_walkthrough_runs_as_written() {
    if !privileged("plugin_authors_walkthrough_runs_as_written") {
        return;
    }
    let blocks = walkthrough_blocks(&docs());
    assert!(
        blocks.len() >= 5,
        "the walkthrough has its steps: {blocks:?}"
    );
    let d = Hutchd::start("walkthrough").unwrap();
    // The reader is a registered Hutch user with admin rights (docs: "ask your admin").
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    let work = temp_dir("walkthrough");
    let bin_dir = hutchd_path().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euxo pipefail\n{}\n", blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("PATH", path)
        .env("HUTCH_SRC", repo_root())
        .env("HUTCH_CONTROL_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- hutchd log\n{}",
        out.status,
        d.log()
    );

    // The images it made are the negative of its input, from `hutchd try`
    // and from the installed plugin.
    let dir = work.path().join("walkthrough");
    let (w, h, input) = read_pgm(&dir.join("cells.pgm"));
    assert_eq!((w, h), (640, 480));
    let expected: Vec<u8> = input.iter().map(|p| 255 - p).collect();
    let tried = dir.join("out/cells.inverted.pgm");
    assert_eq!(read_pgm(&tried).2, expected, "{}", tried.display());
    assert_eq!(read_pgm(&dir.join("inverted.pgm")).2, expected);
    assert!(
        stdout.contains("completed") || stderr.contains("completed"),
        "task run printed the task: {stdout}"
    );
    let tasks = d.ctl(&["--json", "task", "list"]).ok().json();
    assert_eq!(tasks["tasks"][0]["state"], "completed", "{tasks}");
}

#[test]
fn try_names_a_denied_scope_as_the_docs_show() {
    if !privileged("try_names_a_denied_scope_as_the_docs_show") {
        return;
    }
    // python-blur without data:write: its write is denied, and `hutchd try`
    // says so in the form docs/plugin-authors.md shows.
    let tmp = hutch_tests::python::vendored_copy(&repo_root().join("examples/plugins/python-blur"))
        .unwrap();
    let plugin = tmp.path().join("plugin");
    let manifest = std::fs::read_to_string(plugin.join("hutch-plugin.toml")).unwrap();
    let narrowed = manifest.replace(
        "scopes = [\"data:read\", \"data:write\"]",
        "scopes = [\"data:read\"]",
    );
    assert_ne!(manifest, narrowed, "the manifest requests data:write");
    std::fs::write(plugin.join("hutch-plugin.toml"), narrowed).unwrap();
    let image = tmp.path().join("cells.pgm");
    let mut pgm = b"P5\n64 48\n255\n".to_vec();
    pgm.extend((0..64 * 48).map(|i| (i % 251) as u8));
    std::fs::write(&image, pgm).unwrap();
    let out = Command::new(hutchd_path())
        .arg("try")
        .arg(&plugin)
        .args(["--task", "threshold", "--input"])
        .arg(&image)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let doc = docs();
    for line in [
        "permission denied: scope data:write is not granted to this plugin",
        "hutch: API denied: data.object.put dataset/try/object/cells.threshold.pgm x1: scope data:write is not granted to this plugin",
        "hutch:   -> request it: scopes = [.., \"data:write\"] in hutch-plugin.toml (an admin grants it at install)",
    ] {
        assert!(stderr.contains(line), "try prints {line:?}:\n{stderr}");
    }
    for shown in [
        "hutch: API denied: data.object.put dataset/try/object/cells.inverted.pgm x1: scope data:write is not granted to this plugin",
        "hutch:   -> request it: scopes = [.., \"data:write\"] in hutch-plugin.toml (an admin grants it at install)",
        "hutch: nothing was denied",
    ] {
        assert!(doc.contains(shown), "the docs show {shown:?}");
    }
}
