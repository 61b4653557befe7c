//! The engine must not pull in tokio (ARCHITECTURE.md §2.4): its own runtime
//! is the only one, and a second reactor would break the simulation's
//! determinism. Checked on the engine's normal dependency tree for the host
//! platform (`--target all` would need every platform's crates downloaded).

// Named so that `cargo test runtime` selects these tests.
mod runtime_no_tokio {
    use std::process::Command;

    #[test]
    fn engine_dependency_tree_has_no_tokio() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = match Command::new(&cargo)
            .args([
                "tree",
                "--manifest-path",
                manifest,
                "-p",
                "scoutfs-engine",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .output()
        {
            Ok(output) => output,
            Err(err) => {
                eprintln!("skipped: cannot run {cargo}: {err}");
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with("scoutfs-engine")),
            "cargo tree printed no engine: {stdout}"
        );
        let tokio: Vec<&str> = stdout
            .lines()
            .filter(|line| line.contains("tokio"))
            .collect();
        assert!(tokio.is_empty(), "the engine depends on tokio: {tokio:?}");
    }
}
