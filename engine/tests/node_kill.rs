//! Issue 4 acceptance: a real single-node process (engine/src/bin/
//! scoutfs_node.rs: quorum slot 0, the server it elects itself to run, a
//! mount over TCP, on image files) is killed with SIGKILL at random moments
//! under a write load and started again, 20 times in a row. Each restart
//! must come up on its own (the new agent finds the old leader in the
//! quorum blocks and fences it: its rid lock is free, so at once), serve
//! within the heartbeat timeout plus fencing, and find every file whose
//! fsync had returned, intact. At the end the volume checks clean.
//!
//! `SCOUTFS_KILL_ROUNDS` changes the number of kills.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::mkfs::{format_volume, MkfsOptions};
use rand::{Rng, SeedableRng};

const ROUNDS_DEFAULT: usize = 20;
/// Heartbeat timeout (2 s) + fencing + opening: the node must serve by then.
const SERVE_LIMIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn mkfs(dir: &Path, port: u16) -> (PathBuf, PathBuf) {
    let (mp, dp) = (dir.join("meta.img"), dir.join("data.img"));
    for (p, size) in [(&mp, 4u64 << 30), (&dp, 8u64 << 30)] {
        std::fs::File::create(p).unwrap().set_len(size).unwrap();
    }
    let meta = FileDevice::open(&mp, &OpenOptions::new()).unwrap();
    let data = FileDevice::open(&dp, &OpenOptions::new()).unwrap();
    let mut opts = MkfsOptions::default();
    opts.quorum_slots[0] = Some((std::net::Ipv4Addr::LOCALHOST, port));
    format_volume(&meta, &data, &opts).expect("mkfs");
    (mp, dp)
}

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn start(dir: &Path, mp: &Path, dp: &Path, gen: usize, verify: Option<&Path>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scoutfs_node"));
    cmd.arg(mp)
        .arg(dp)
        .arg(dir.join("rid"))
        .arg(gen.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(v) = verify {
        cmd.arg(v);
    }
    let mut child = cmd.spawn().expect("start scoutfs_node");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // A plain reader thread in the test harness, outside any runtime.
    #[allow(clippy::disallowed_methods)]
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Run { child, lines: rx }
}

#[test]
// Real processes on real time: the harness waits with the wall clock.
#[allow(clippy::disallowed_methods)]
fn single_node_survives_kill_9_under_load() {
    let rounds = std::env::var("SCOUTFS_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let (mp, dp) = mkfs(dir.path(), free_port());
    let list = dir.path().join("synced.txt");
    let mut synced: Vec<String> = Vec::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6b11_1009);

    for gen in 0..=rounds {
        std::fs::write(&list, synced.join("\n")).unwrap();
        let mut run = start(dir.path(), &mp, &dp, gen, Some(&list));
        let first = run
            .lines
            .recv_timeout(SERVE_LIMIT)
            .unwrap_or_else(|_| panic!("round {gen}: the node did not come up in {SERVE_LIMIT:?}"));
        assert_eq!(first, format!("verified {}", synced.len()), "round {gen}");
        if gen == rounds {
            let _ = run.child.kill();
            let _ = run.child.wait();
            break;
        }
        // Let it write for a random while, then kill it mid-stride.
        let until = Duration::from_millis(rng.gen_range(20..600));
        let t0 = std::time::Instant::now();
        while t0.elapsed() < until {
            if let Ok(line) = run.lines.recv_timeout(Duration::from_millis(5)) {
                if let Some(name) = line.strip_prefix("synced ") {
                    synced.push(name.to_string());
                }
            }
        }
        run.child.kill().unwrap();
        run.child.wait().unwrap();
        // Lines already printed were fsync'd before the kill.
        while let Ok(line) = run.lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(name) = line.strip_prefix("synced ") {
                synced.push(name.to_string());
            }
        }
    }
    assert!(
        synced.len() > rounds,
        "too little was written: {}",
        synced.len()
    );

    let meta = FileDevice::open(&mp, &OpenOptions::new().read_only(true)).unwrap();
    let data = FileDevice::open(&dp, &OpenOptions::new().read_only(true)).unwrap();
    let report = engine::check::check_volume(&meta, Some(&data as &dyn BlockDevice), &mut |_| {})
        .expect("check runs");
    let faults = report.messages();
    assert!(faults.is_empty(), "check after the kills: {faults:#?}");
}
