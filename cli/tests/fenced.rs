//! `scoutfs fenced` fencing a real node (reference §6.3-6.4): a quorum
//! member (`quorum_slot_nr=0`) is killed with SIGKILL while it leads, so
//! the quorum blocks name its rid as a leader that may still run. The
//! next mount of the slot must have it fenced before it serves: the
//! request appears in its status tree (`fence/<rid>/`, reason
//! `quorum_block_leader`, the slot's address), the agent runs the site
//! script with `SCOUTFS_FENCED_REQ_RID`/`_IP`. The script fails the first
//! time (`error=1`: the server stops and a new term asks again) and
//! succeeds the second; the mount then comes up, the killed rid is
//! reclaimed and its request removed, and the volume checks clean after
//! the new mount leaves.
//!
//! The daemons are this test binary run again as a child (the ignored
//! `daemon_child` test), so each can be killed and each sees the test's
//! `SCOUTFS_RUN_DIR`. Needs root and /dev/fuse; skipped otherwise.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drivers::{BlockDevice, FileDevice, OpenOptions};
use support::{free_port, make_volume, skip, SCOUTFS};

const WAIT: Duration = Duration::from_secs(120);

/// Run by the parent as a child process: one daemon with slot 0. Ignored
/// so a normal run skips it: it is not a test of its own but the daemon
/// the fence test must be able to SIGKILL, which only a separate process
/// allows (it returns at once without the FENCE_TEST_* variables).
#[test]
#[ignore = "a daemon the fence test starts as a child"]
fn daemon_child() {
    let Ok(meta) = std::env::var("FENCE_TEST_META") else {
        return;
    };
    let data = std::env::var("FENCE_TEST_DATA").unwrap();
    let mnt = std::env::var("FENCE_TEST_MNT").unwrap();
    let mut config = fuse_frontend::Config::new(meta.into(), data.into(), mnt.into());
    config.options.quorum_slot_nr = Some(0);
    config.options.quorum_heartbeat_timeout_ms = 2_000;
    config.on_ready = Some(Box::new(|| {
        println!("FENCE_TEST_READY");
        true
    }));
    if let Err(e) = fuse_frontend::serve(config) {
        eprintln!("daemon_child: {e}");
        std::process::exit(1);
    }
}

struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    fn start(run: &Path, meta: &Path, data: &Path, mnt: &Path) -> Daemon {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "daemon_child", "--nocapture"])
            .env("SCOUTFS_RUN_DIR", run)
            .env("FENCE_TEST_META", meta)
            .env("FENCE_TEST_DATA", data)
            .env("FENCE_TEST_MNT", mnt)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the daemon child");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            // Drain to the end even once nobody listens: a closed pipe
            // would fail the child's own last words (libtest's summary)
            // with EPIPE and make a clean exit look like a failure.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("FENCE_TEST_READY") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("the daemon did not mount: {:?}", child.wait());
                }
            }
        }
        Daemon {
            child,
            mnt: mnt.to_path_buf(),
        }
    }

    fn signal(&mut self, sig: i32) {
        // SAFETY: kill with our child's pid and a signal number.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills the agent when the test ends, however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn trees(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("f."))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fenced_agent_fences_a_killed_leader() {
    if skip("fenced_agent_fences_a_killed_leader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (meta, data) = make_volume(dir.path(), free_port());

    // The first node leads, then dies without a word.
    let mut a = Daemon::start(&run, &meta, &data, &mnt);
    let first = trees(&run);
    assert_eq!(first.len(), 1, "{first:?}");
    let rid_a = read(&first[0].join("rid"));
    assert_eq!(rid_a.len(), 16);
    wait_for("the leader's quorum files", || {
        read(&first[0].join("quorum/is_leader")) == "1"
    });
    a.signal(libc::SIGKILL);
    a.wait();
    drop(a);
    // As if it ran on another host: nothing here knows it is dead.
    std::fs::remove_file(run.join(format!("rid/{rid_a}.lock"))).unwrap();

    // The site's fence script: fails once, then fences.
    let script = dir.path().join("fence.sh");
    let log = dir.path().join("fence.log");
    let once = dir.path().join("failed-once");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$SCOUTFS_FENCED_REQ_RID $SCOUTFS_FENCED_REQ_IP $*\" >> {log}\n\
             if [ ! -e {once} ]; then touch {once}; exit 3; fi\nexit 0\n",
            log = log.display(),
            once = once.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent_out = dir.path().join("agent.out");
    let agent = Command::new(SCOUTFS)
        .arg("fenced")
        .stdout(std::fs::File::create(&agent_out).unwrap())
        .env("SCOUTFS_RUN_DIR", &run)
        .env("SCOUTFS_FENCED_CONFIG_FILE", dir.path().join("none.conf"))
        .env("SCOUTFS_FENCED_DELAY", "0.2")
        .env("SCOUTFS_FENCED_RUN", &script)
        .env("SCOUTFS_FENCED_RUN_ARGS", "site-arg")
        .spawn()
        .expect("start scoutfs fenced");
    let _agent = Agent(agent);
    let agent_lock = run.join("rid/fenced.lock");
    wait_for("the agent's lock", || {
        engine::node::fence::flock_held_elsewhere(&agent_lock)
    });

    // The next node must have the dead leader fenced by the agent. The
    // failed fence cost it term 2; in term 3 the slot's record is its own
    // (one slot, one mount at a time), so the dead rid is left to client
    // recovery: fenced once it has stayed away 30 s.
    let mut b = Daemon::start(&run, &meta, &data, &mnt);
    let tree_b = trees(&run)
        .into_iter()
        .find(|t| read(&t.join("rid")) != rid_a)
        .expect("the new node's tree");
    let req = tree_b.join(format!("fence/{rid_a}"));
    wait_for("the client recovery request", || {
        read(&req.join("reason")) == "client_recovery"
    });
    assert_eq!(read(&req.join("rid")), rid_a);
    wait_for("the script's second run", || {
        read(&log).lines().count() == 2
    });
    // Reclaimed: the request is gone.
    wait_for("the fence request to go", || {
        std::fs::read_dir(tree_b.join("fence")).is_ok_and(|mut d| d.next().is_none())
    });
    let lines: Vec<String> = read(&log).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec![format!("{rid_a} 127.0.0.1 site-arg"); 2],
        "the script ran once failing, once fencing"
    );
    let said = read(&agent_out);
    let reasons: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("fencing rid"))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    assert_eq!(
        reasons,
        ["quorum_block_leader", "client_recovery"],
        "{said}"
    );
    assert_eq!(read(&tree_b.join("quorum/is_leader")), "1");
    let term: u64 = read(&tree_b.join("quorum/term")).parse().unwrap();
    assert!(term >= 3, "a failed fence must have cost a term: {term}");
    assert!(!read(&tree_b.join("quorum/server_addr")).is_empty());

    std::fs::write(mnt.join("after-fence"), b"served").unwrap();
    // Leave through the control socket: commit, farewell, exit. (The
    // only test of this binary that runs: the variable is ours.)
    std::env::set_var("SCOUTFS_RUN_DIR", &run);
    let client = fuse_frontend::control::client::Client::for_path(&mnt).unwrap();
    client.unmount().expect("unmount");
    assert!(b.wait().success(), "the new node did not leave cleanly");
    drop(b);
    let ro = OpenOptions::new().read_only(true);
    let m = FileDevice::open(&meta, &ro).unwrap();
    let d = FileDevice::open(&data, &ro).unwrap();
    let report =
        engine::check::check_volume(&m, Some(&d as &dyn BlockDevice), &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.messages());
}
