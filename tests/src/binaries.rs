//! The binaries under test, built once per test process so that a test never runs a stale one.
//!
//! `cargo test --workspace` stays the single test command: the first test that needs a binary
//! runs `cargo build -p amr-gateway -p amr-session-service --bins` (with `$CARGO` when cargo
//! runs the tests) and takes the executables' paths from cargo's JSON messages, so the target
//! directory (`CARGO_TARGET_DIR`, `build.target-dir`, ...) never has to be guessed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const GATEWAY: &str = "amr-gateway";
pub const SESSION_SERVICE: &str = "amr-session-service";
/// The future one-process embedded binary (not built yet).
pub const EMBEDDED: &str = "amr-bridge";

const PACKAGES: [&str; 2] = [GATEWAY, SESSION_SERVICE];

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn build() -> Result<HashMap<String, PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).arg("build");
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    cmd.args(["--bins", "--message-format=json-render-diagnostics"]);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cargo:?} build: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "`cargo build -p amr-gateway -p amr-session-service --bins` failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let mut found = HashMap::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for p in PACKAGES {
        if !found.contains_key(p) {
            found.insert(p.to_owned(), fallback_path(p));
        }
    }
    Ok(found)
}

/// `<target dir>/debug/<name>` for when cargo printed no artifact line.
fn fallback_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    };
    target.join("debug").join(name)
}

/// Path of a freshly built binary (`amr-gateway` or `amr-session-service`). Builds on first use
/// in this process; panics with cargo's errors if the build fails.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(build);
    match built {
        Ok(map) => {
            let path = map
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} is not a binary of this workspace"));
            assert!(
                path.exists(),
                "{} does not exist after the build",
                path.display()
            );
            path
        }
        Err(e) => panic!("{e}"),
    }
}
