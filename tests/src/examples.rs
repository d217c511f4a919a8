//! Shared end-to-end helpers for the example plugins (`examples/plugins/`),
//! which both implement the image contract (PGM blur and threshold with exact
//! integer definitions):
//!
//! - deterministic test images ([`test_image`]), PGM encode/decode;
//! - the reference operations ([`reference_blur`], [`reference_threshold`]),
//!   written here independently of either plugin, exactly per the contract;
//! - [`run_image_e2e`]: one example plugin through a real `hutchd`, driven
//!   only with `hutchctl`, checked pixel for pixel, audit trail, revert and
//!   chain verification included;
//! - [`rust_blur_dir`]: the Rust example plugin's directory with its binary.
//!
//! Every check panics with the daemon's log and the relevant `hutchctl`
//! output, so a failure says what happened.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{Hutchd, s, sibling_bin};

/// A grayscale image, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `width * height` bytes.
    pub pixels: Vec<u8>,
}

/// A deterministic `width` x `height` test image: a diagonal gradient plus
/// xorshift noise of ±16 from `seed` (so blur and threshold both have
/// something to do, and edges and odd sizes are exercised).
pub fn test_image(width: usize, height: usize, seed: u64) -> Gray {
    let mut state = seed | 1;
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let gx = x * 255 / width.saturating_sub(1).max(1);
            let gy = y * 255 / height.saturating_sub(1).max(1);
            let v = ((gx + gy) / 2) as i64 + (state % 33) as i64 - 16;
            pixels.push(v.clamp(0, 255) as u8);
        }
    }
    Gray {
        width,
        height,
        pixels,
    }
}

/// The PGM file of `img`: exactly `P5\n<w> <h>\n255\n` + pixels (what both
/// plugins must write).
pub fn encode_pgm(img: &Gray) -> Vec<u8> {
    let mut out = format!("P5\n{} {}\n255\n", img.width, img.height).into_bytes();
    out.extend_from_slice(&img.pixels);
    out
}

/// Decodes a binary PGM (P5, maxval 255; `#` comments in the header).
///
/// # Errors
/// A message saying what is wrong.
pub fn decode_pgm(data: &[u8]) -> Result<Gray, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        if data.get(i) == Some(&b'#') {
            while i < data.len() && data[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() && data[i] != b'#' {
            i += 1;
        }
        if start == i {
            return Err(format!("PGM header ends after {} fields", fields.len()));
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    i += 1;
    let num = |f: &str| {
        f.parse::<usize>()
            .map_err(|e| format!("PGM field {f:?}: {e}"))
    };
    let (w, h, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if fields[0] != "P5" || max != 255 {
        return Err(format!("not a P5 PGM with maxval 255: {fields:?}"));
    }
    let pixels = data.get(i..).unwrap_or_default();
    if pixels.len() != w * h {
        return Err(format!("{} pixel bytes for {w}x{h}", pixels.len()));
    }
    Ok(Gray {
        width: w,
        height: h,
        pixels: pixels.to_vec(),
    })
}

/// The contract's blur: `passes` times
/// `out(x,y) = (Σ k(dx,dy) · in(clamp(x+dx), clamp(y+dy)) + 8) >> 4` with
/// `k = [[1,2,1],[2,4,2],[1,2,1]]`.
pub fn reference_blur(img: &Gray, passes: u32) -> Gray {
    const K: [[u32; 3]; 3] = [[1, 2, 1], [2, 4, 2], [1, 2, 1]];
    let (w, h) = (img.width as i64, img.height as i64);
    let mut cur = img.clone();
    for _ in 0..passes {
        let mut next = cur.clone();
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0u32;
                for (dy, row) in K.iter().enumerate() {
                    for (dx, k) in row.iter().enumerate() {
                        let sx = (x + dx as i64 - 1).clamp(0, w - 1);
                        let sy = (y + dy as i64 - 1).clamp(0, h - 1);
                        sum += k * u32::from(cur.pixels[(sy * w + sx) as usize]);
                    }
                }
                next.pixels[(y * w + x) as usize] = ((sum + 8) >> 4) as u8;
            }
        }
        cur = next;
    }
    cur
}

/// The contract's threshold: 255 where `in >= level`, else 0.
pub fn reference_threshold(img: &Gray, level: u8) -> Gray {
    Gray {
        pixels: img
            .pixels
            .iter()
            .map(|&p| if p >= level { 255 } else { 0 })
            .collect(),
        ..img.clone()
    }
}

/// The `id = "..."` of a plugin dir's manifest.
///
/// # Errors
/// The manifest is unreadable or has no `id` line.
pub fn manifest_id(plugin_dir: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(plugin_dir.join("hutch-plugin.toml"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("id"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .map(|r| r.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| io::Error::other("hutch-plugin.toml has no id line"))
}

/// `examples/plugins/rust-blur` assembled under `root` the way its README
/// says (the manifest plus `bin/hutch-blur`, the workspace build's binary
/// next to `hutchd`). Returns the new plugin dir.
///
/// # Errors
/// Copying failed.
///
/// # Panics
/// When `hutch-blur` is not built (`cargo build --workspace --bins`).
pub fn rust_blur_dir(root: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/rust-blur");
    let dir = root.join("rust-blur");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(src.join("hutch-plugin.toml"), dir.join("hutch-plugin.toml"))?;
    std::fs::copy(sibling_bin("hutch-blur"), dir.join("bin/hutch-blur"))?;
    for d in [&dir, &dir.join("bin")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// The metadata stored with `dataset/key@version`, read from the daemon's
/// SQLite file (`object_versions.metadata`, a JSON object of strings):
/// `hutchctl` shows objects without their metadata.
///
/// # Errors
/// The database cannot be read or has no such version.
pub fn stored_metadata(
    state_dir: &Path,
    dataset: &str,
    key: &str,
    version: i64,
) -> Result<serde_json::Value, String> {
    use sqlx::ConnectOptions;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(state_dir.join("hutch.db"))
            .read_only(true)
            .connect()
            .await
            .map_err(|e| format!("open {}/hutch.db: {e}", state_dir.display()))?;
        let text: String = sqlx::query_scalar(
            "SELECT metadata FROM object_versions WHERE dataset_id = ? AND key = ? AND version = ?",
        )
        .bind(dataset)
        .bind(key)
        .bind(version)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("metadata of {dataset}/{key}@{version}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("metadata {text:?}: {e}"))
    })
}

fn fail(d: &Hutchd, what: &str) -> ! {
    panic!("{what}\n--- hutchd log ---\n{}", d.log())
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// Runs one task through `hutchctl task run --detach` + `task watch` and
/// returns its `task show --json` detail (panics unless it completed).
fn run_task(d: &Hutchd, plugin: &str, action: &str, args: &str, input: &str) -> serde_json::Value {
    let r = d.ctl(&[
        "--json", "task", "run", plugin, action, "--args", args, "--input", input, "--detach",
    ]);
    if r.code != 0 {
        fail(d, &format!("task run {action}: {r:?}"));
    }
    let id = s(&r.json(), "id").to_owned();
    let w = d.ctl(&["task", "watch", &id]);
    let detail = d.ctl(&["--json", "task", "show", &id]);
    if w.code != 0 {
        fail(
            d,
            &format!("task {id} ({action}) did not complete: {w:?}\n{detail:?}"),
        );
    }
    detail.json()
}

/// One example plugin end to end through a real `hutchd`, only with
/// `hutchctl`, as an admin would do it:
///
/// 1. start a daemon on temp paths ([`Hutchd::start`] with `test` as name);
///    register root as an admin user;
/// 2. create dataset `imgs`, put a 257x193 [`test_image`] as `raw/cells.pgm`;
/// 3. install `plugin_dir` (its manifest `id` is read from the dir) granting
///    `data:read` and `data:write`, enabled;
/// 4. run `blur {"passes": 3}` and `threshold {"level": 100}` on it
///    (`task run --detach`, `task watch`, `task show --json`): each must
///    complete with result `{"outputs": [KEY], "pixels": 49601}`, yield
///    `KEY` with the contract's metadata as its value (source,
///    source_version, action, args), and store it with the same metadata
///    (strings; `args` as JSON text; read from the daemon's SQLite file,
///    [`stored_metadata`]);
/// 5. fetch `raw/cells.blur.pgm` and `raw/cells.threshold.pgm` with
///    `dataset get` and compare them byte for byte with [`encode_pgm`] of the
///    reference;
/// 6. check each task's audit trail: the plugin's reads and its one put are
///    allowed, carry the task id, and act as root;
/// 7. `audit revert --task` the blur task: `raw/cells.blur.pgm` is gone, the
///    threshold output stays; `audit verify` is ok.
///
/// `plugin_dir` must be a complete plugin directory (binary built, Python
/// deps vendored). Panics on any mismatch.
///
/// # Errors
/// The daemon could not start or files could not be written.
pub fn run_image_e2e(test: &str, plugin_dir: &Path) -> io::Result<()> {
    let plugin = manifest_id(plugin_dir)?;
    let d = Hutchd::start(test)?;
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    let img = test_image(257, 193, 0x5eed);
    let file = d.root().join("cells.pgm");
    std::fs::write(&file, encode_pgm(&img))?;
    d.ctl(&["dataset", "create", "Images", "--id", "imgs"]).ok();
    let put = d.ctl(&[
        "dataset",
        "put",
        "imgs",
        "raw/cells.pgm",
        &file.to_string_lossy(),
    ]);
    if put.code != 0 {
        fail(&d, &format!("dataset put: {put:?}"));
    }
    let install = d.ctl(&[
        "plugin",
        "install",
        &plugin_dir.to_string_lossy(),
        "--grant",
        "data:read",
        "--grant",
        "data:write",
        "--enable",
    ]);
    if install.code != 0 {
        fail(&d, &format!("plugin install: {install:?}"));
    }
    let cases = [
        (
            "blur",
            r#"{"passes": 3}"#,
            serde_json::json!({"passes": 3}),
            reference_blur(&img, 3),
        ),
        (
            "threshold",
            r#"{"level": 100}"#,
            serde_json::json!({"level": 100}),
            reference_threshold(&img, 100),
        ),
    ];
    let mut task_ids = Vec::new();
    for (action, args, args_value, reference) in &cases {
        let detail = run_task(&d, &plugin, action, args, "imgs/raw/cells.pgm");
        let task = &detail["task"];
        let id = s(task, "id").to_owned();
        let key = format!("raw/cells.{action}.pgm");
        assert_eq!(s(task, "state"), "completed", "{detail}");
        assert_eq!(s(task, "user"), "root", "{detail}");
        let result = json_of(s(task, "result_json"));
        assert_eq!(
            result,
            serde_json::json!({"outputs": [key], "pixels": img.width * img.height}),
            "{action}: task result\n{detail}"
        );
        // The yielded output: the object and the contract's metadata.
        let outputs = detail["outputs"].as_array().cloned().unwrap_or_default();
        let out = outputs
            .iter()
            .find(|o| s(&o["object"], "key") == key)
            .unwrap_or_else(|| fail(&d, &format!("{action}: no output object {key}: {detail}")));
        assert_eq!(s(&out["object"], "dataset_id"), "imgs");
        let meta = json_of(s(out, "value_json"));
        assert_eq!(s(&meta, "source"), "imgs/raw/cells.pgm", "{meta}");
        assert_eq!(s(&meta, "action"), *action, "{meta}");
        assert_eq!(meta["source_version"].as_u64(), Some(1), "{meta}");
        assert_eq!(&meta["args"], args_value, "{meta}");
        // The metadata stored with the object: strings, `args` as JSON text.
        let version = out["object"]["version"].as_i64().unwrap_or(1);
        let stored = stored_metadata(&d.state, "imgs", &key, version)
            .unwrap_or_else(|e| fail(&d, &format!("{action}: {e}")));
        assert_eq!(s(&stored, "source"), "imgs/raw/cells.pgm", "{stored}");
        assert_eq!(s(&stored, "source_version"), "1", "{stored}");
        assert_eq!(s(&stored, "action"), *action, "{stored}");
        assert_eq!(&json_of(s(&stored, "args")), args_value, "{stored}");
        // The pixels, byte for byte (header included: writers emit it exactly).
        let got = d.root().join(format!("{action}.pgm"));
        let get = d.ctl(&["dataset", "get", "imgs", &key, "-o", &got.to_string_lossy()]);
        if get.code != 0 {
            fail(&d, &format!("dataset get {key}: {get:?}"));
        }
        let bytes = std::fs::read(&got)?;
        let decoded = decode_pgm(&bytes).unwrap_or_else(|e| fail(&d, &format!("{key}: {e}")));
        assert_eq!((decoded.width, decoded.height), (img.width, img.height));
        let differ = decoded
            .pixels
            .iter()
            .zip(&reference.pixels)
            .position(|(a, b)| a != b);
        assert_eq!(
            differ, None,
            "{action}: first differing pixel (index) against the reference"
        );
        assert!(
            bytes == encode_pgm(reference),
            "{action}: the file is not exactly the reference PGM"
        );
        // The audit trail: reads and the one put, allowed, under the task, as root.
        let audit = detail["audit"].as_array().cloned().unwrap_or_default();
        let by_plugin: Vec<&serde_json::Value> = audit
            .iter()
            .filter(|e| s(e, "actor_kind") == "plugin")
            .collect();
        let reads: Vec<_> = by_plugin
            .iter()
            .filter(|e| s(e, "operation") == "data.object.get")
            .collect();
        let puts: Vec<_> = by_plugin
            .iter()
            .filter(|e| s(e, "operation") == "data.object.put")
            .collect();
        assert!(
            !reads.is_empty(),
            "{action}: no read in the audit trail: {audit:?}"
        );
        assert_eq!(
            puts.len(),
            1,
            "{action}: one put in the audit trail: {audit:?}"
        );
        assert_eq!(
            s(puts[0], "resource"),
            format!("dataset/imgs/object/{key}"),
            "{audit:?}"
        );
        for e in reads.iter().chain(&puts) {
            assert_eq!(s(e, "decision"), "allowed", "{e}");
            assert_eq!(s(e, "task_id"), id, "{e}");
            assert_eq!(s(e, "actor_user"), "root", "{e}");
            assert_eq!(s(e, "actor_plugin_id"), plugin, "{e}");
        }
        task_ids.push(id);
    }
    // Revert the blur task: its output is gone, the threshold output stays.
    let rv = d.ctl(&["audit", "revert", "--task", &task_ids[0]]);
    if rv.code != 0 {
        fail(&d, &format!("audit revert --task: {rv:?}"));
    }
    let objs = d.ctl(&["--json", "dataset", "objects", "imgs"]).ok().json();
    let mut keys: Vec<String> = objs["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| s(o, "key").to_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["raw/cells.pgm", "raw/cells.threshold.pgm"],
        "after revert"
    );
    let gone = d.ctl(&["dataset", "get", "imgs", "raw/cells.blur.pgm"]);
    assert_ne!(gone.code, 0, "the reverted output is gone: {gone:?}");
    let v = d.ctl(&["--json", "audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "audit verify: {v}");
    Ok(())
}

/// Cancels a long blur (a `width` x `height` image, 16 passes) once it
/// reports progress, through `hutchctl task cancel`; the task must end
/// `cancelled` and leave no output object. Panics otherwise.
///
/// # Errors
/// The daemon could not start or files could not be written.
pub fn run_cancel_e2e(
    test: &str,
    plugin_dir: &Path,
    width: usize,
    height: usize,
) -> io::Result<()> {
    let plugin = manifest_id(plugin_dir)?;
    let d = Hutchd::start(test)?;
    d.ctl(&["user", "add", "root", "--role", "admin", "--uid", "0"])
        .ok();
    let file = d.root().join("big.pgm");
    std::fs::write(&file, encode_pgm(&test_image(width, height, 7)))?;
    d.ctl(&["dataset", "create", "Images", "--id", "imgs"]).ok();
    d.ctl(&["dataset", "put", "imgs", "big.pgm", &file.to_string_lossy()])
        .ok();
    let install = d.ctl(&[
        "plugin",
        "install",
        &plugin_dir.to_string_lossy(),
        "--grant-all",
        "--enable",
    ]);
    if install.code != 0 {
        fail(&d, &format!("plugin install: {install:?}"));
    }
    let r = d.ctl(&[
        "--json",
        "task",
        "run",
        &plugin,
        "blur",
        "--args",
        r#"{"passes": 16}"#,
        "--input",
        "imgs/big.pgm",
        "--detach",
    ]);
    if r.code != 0 {
        fail(&d, &format!("task run: {r:?}"));
    }
    let id = s(&r.json(), "id").to_owned();
    let running = crate::daemon::wait_for(Duration::from_secs(60), || {
        let t = d.ctl(&["--json", "task", "show", &id]).json();
        let p = t["task"]["progress_percent"].as_f64().unwrap_or(0.0);
        (s(&t["task"], "state") == "running" && p > 0.0).then_some(p)
    });
    if running.is_none() {
        fail(&d, "the blur never reported progress");
    }
    d.ctl(&["task", "cancel", &id, "--reason", "test cancel"])
        .ok();
    let end = crate::daemon::wait_for(Duration::from_secs(60), || {
        let t = d.ctl(&["--json", "task", "show", &id]).json();
        let st = s(&t["task"], "state").to_owned();
        (st != "running" && st != "queued").then_some(t)
    });
    let Some(t) = end else {
        fail(&d, "the cancelled task did not end within 60 s");
    };
    assert_eq!(s(&t["task"], "state"), "cancelled", "{t}");
    let objs = d.ctl(&["--json", "dataset", "objects", "imgs"]).ok().json();
    let keys: Vec<String> = objs["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| s(o, "key").to_owned())
        .collect();
    assert_eq!(
        keys,
        ["big.pgm"],
        "no output (not even a partial one) after the cancel"
    );
    let v = d.ctl(&["--json", "audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "audit verify: {v}");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_match_hand_computed_values() {
        let img = Gray {
            width: 3,
            height: 3,
            pixels: vec![0, 0, 0, 0, 160, 0, 0, 0, 0],
        };
        assert_eq!(
            reference_blur(&img, 1).pixels,
            vec![10, 20, 10, 20, 40, 20, 10, 20, 10]
        );
        // Clamped edges: a corner pixel sees itself 9 times weighted 16.
        let one = Gray {
            width: 1,
            height: 1,
            pixels: vec![201],
        };
        assert_eq!(reference_blur(&one, 5).pixels, vec![201]);
        assert_eq!(reference_threshold(&img, 160).pixels[4], 255);
        assert_eq!(reference_threshold(&img, 161).pixels[4], 0);
        let t = test_image(257, 193, 1);
        assert_eq!(decode_pgm(&encode_pgm(&t)).unwrap(), t);
        assert_eq!(test_image(257, 193, 1), t, "deterministic");
        assert!(t.pixels.iter().any(|&p| p < 40) && t.pixels.iter().any(|&p| p > 215));
    }
}
