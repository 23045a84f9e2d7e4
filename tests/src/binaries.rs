//! The binaries under test, built once per test process so that a test never runs a stale one.
//!
//! `cargo test --workspace` stays the single test command: the first test that needs a binary
//! runs `cargo build -p amr-gateway -p amr-session-service -p amr-bridge -p amr-export --bins` (with `$CARGO`
//! when cargo runs the tests) and takes the executables' paths from cargo's JSON messages, so
//! the target directory (`CARGO_TARGET_DIR`, `build.target-dir`, ...) never has to be guessed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const GATEWAY: &str = "amr-gateway";
pub const SESSION_SERVICE: &str = "amr-session-service";
/// The one-process binary (embedded mode when `AMR_NATS_URL` is not set).
pub const EMBEDDED: &str = "amr-bridge";
/// The session export tool (downstream side).
pub const EXPORT: &str = "amr-export";

/// Every binary under test, built together by one `cargo build`.
const PACKAGES: [&str; 4] = [GATEWAY, SESSION_SERVICE, EMBEDDED, EXPORT];

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
    // Cargo sets these for the test process itself; inherited by this build they would differ
    // from any build run from a shell (ring's build script watches CARGO_MANIFEST_DIR), and
    // every switch between the two rebuilds ring, rustls, async-nats and all that depends on
    // them. Configuration variables (CARGO_TARGET_DIR, CARGO_HOME, CARGO_BUILD_*, ...) stay.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let set_for_tests = matches!(
            k,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        ) || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || k.starts_with("CARGO_BIN_NAME");
        if set_for_tests {
            cmd.env_remove(k);
        }
    }
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
        let packages: Vec<String> = PACKAGES.iter().map(|p| format!("-p {p}")).collect();
        return Err(format!(
            "`cargo build {} --bins` failed ({}):\n{}",
            packages.join(" "),
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

/// Path of a freshly built binary (`amr-gateway`, `amr-session-service`, `amr-bridge`,
/// `amr-export`). Builds
/// on first use
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
