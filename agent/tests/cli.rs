//! The command line as a user meets it: help, version and config checking, run against the
//! built binary. (Having an integration test here also makes `cargo test --workspace` build
//! target/debug/redis-steward, which the end-to-end tests in tests/ drive.)

use std::process::{Command, Output};

fn steward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redis-steward"))
        .args(args)
        .output()
        .expect("run redis-steward")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let v = steward(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        stdout(&v).trim(),
        format!("redis-steward {}", env!("CARGO_PKG_VERSION"))
    );
    let h = steward(&["--help"]);
    assert!(h.status.success());
    let help = stdout(&h);
    for word in ["run", "status", "check-config", "EXAMPLES", "/metrics"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let run_help = stdout(&steward(&["run", "--help"]));
    assert!(
        run_help.contains("--config") && run_help.contains("SIGTERM"),
        "{run_help}"
    );
    let status_help = stdout(&steward(&["status", "--help"]));
    assert!(
        status_help.contains("--json") && status_help.contains("--api"),
        "{status_help}"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let o = steward(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("frobnicate"));
}

fn config(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "data_store_id = \"ds\"\nnode_name = \"n1\"\nplan = \"startup\"\ndata_dir = \"{0}/data\"\nstate_dir = \"{0}/state\"\n[redis]\nserver_path = \"/bin/sh\"\npassword = \"long-enough\"\n{extra}",
        dir.path().display()
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_config_accepts_a_good_file_and_names_bad_keys() {
    let (_d, good) = config("");
    let o = steward(&["check-config", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok (data store ds, node n1, plan startup"));
    // A store without a key takes no backups: valid, and said so.
    let (_d, no_key) = config("[backup]\nurl = \"file:///tmp/rs-backups\"\n");
    let o = steward(&["check-config", no_key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("warning: backups are off: backup.url is set"),
        "{}",
        stdout(&o)
    );

    let cases = [
        ("bogus_key = 1\n", "bogus_key"),
        ("[access]\nallowed_cidrs = [\"300.1.1.0/24\"]\n", "access.allowed_cidrs"),
        ("[tls]\nmode = \"files\"\ncert_file = \"/nonexistent/node.crt\"\nkey_file = \"/etc/hostname\"\nca_file = \"/etc/hostname\"\n", "tls.cert_file"),
    ];
    for (extra, key) in cases {
        let (_d, p) = config(extra);
        let o = steward(&["check-config", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{extra}");
        let e = stderr(&o);
        assert!(
            e.contains(key),
            "error for {extra:?} does not name {key}: {e}"
        );
        assert!(stdout(&o).is_empty());
    }
    let (_d, p) = config("");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("startup", "platinum"),
    )
    .unwrap();
    let e = stderr(&steward(&["check-config", p.to_str().unwrap()]));
    assert!(
        e.contains("`plan`") && e.contains("platinum") && e.contains("premium"),
        "{e}"
    );
    let e = stderr(&steward(&["check-config", "/nonexistent.toml"]));
    assert!(e.contains("/nonexistent.toml"), "{e}");
}

#[test]
fn status_without_an_agent_says_so() {
    let o = steward(&["status", "--api", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is the agent running"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn keygen_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    let o = steward(&["keygen", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = steward(&["keygen", p.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("not overwriting"));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
}
