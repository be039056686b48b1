//! The `tollgate` command line's config check (`-t`), and the shipped config files.

use std::path::Path;
use std::process::Command;
use tollgate::Config;

/// A minimal valid file (no TLS, so no certificate files are needed).
const VALID: &str = r#"
listeners:
  - { name: http, address: "127.0.0.1:18080" }
upstreams:
  api:
    backends: ["127.0.0.1:19001", "127.0.0.1:19002"]
routes:
  - { name: api, match: { prefix: /api }, upstream: api }
"#;

/// `tollgate -t` accepts the shipped demo config and exits 0.
#[test]
fn cli_test_flag_accepts_demo_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-t", "-c", "conf/tollgate.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("is valid"), "{stdout}");
}

/// `tollgate -t` refuses a broken file with a non-zero exit and every error on stderr.
#[test]
fn cli_test_flag_reports_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    let broken = VALID
        .replacen("upstream: api }", "upstream: apii }", 1)
        .replacen("prefix: /api", "prefix: api", 1);
    std::fs::write(&file, format!("logging: {{ level: loud }}\n{broken}")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .output()
        .expect("run tollgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    for line in [
        "logging.level: unknown level \"loud\"",
        "routes[0].match.prefix: prefix \"api\" must start with '/'",
        "routes[0].upstream: unknown upstream \"apii\"",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
}

/// A missing config file is a clean non-zero exit naming the file.
#[test]
fn cli_missing_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-t", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .expect("run tollgate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tollgate.yaml"), "{stderr}");
}

/// Every shipped file under conf/ loads and validates.
#[test]
fn every_shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Relative certificate paths resolve from the working directory: cargo runs integration
    // tests from the package root, as the demo runs the binary.
    let mut loaded = 0;
    for entry in std::fs::read_dir(root.join("conf")).expect("conf/") {
        let path = entry.expect("entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            if let Err(e) = Config::load(&path) {
                panic!("{}: {e}", path.display());
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "no config files found in conf/");
}
