//! `cairn server` rejects wrong or missing configuration with a message that
//! names the setting and exit code 2.

use std::process::Command;

fn server(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn")).arg("server").args(args).output().expect("run cairn");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_configuration_exits_2_and_names_the_problem() {
    let (code, err) = server(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("data_dir"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (flag, value, setting) in [
        ("--listen", "not-an-address", "listen"),
        ("--replication-factor", "0", "replication_factor"),
        ("--worker-threads", "5000", "worker_threads"),
        ("--mvcc-retention-secs", "0", "mvcc_retention_secs"),
        ("--memtable-bytes", "1024", "memtable_bytes"),
        ("--max-clock-offset-ms", "0", "max_clock_offset_ms"),
    ] {
        let (code, err) = server(&["--data-dir", d, flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(setting), "{flag} {value} names {setting}: {err}");
    }

    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "data_dir = \"x\"\nreplication_factr = 3\n").unwrap();
    let (code, err) = server(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("replication_factr"), "{err}");

    let (code, err) = server(&["--config", "/nonexistent/cairn.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");

    let (code, _) = server(&["--no-such-flag"]);
    assert_eq!(code, 2);
}
