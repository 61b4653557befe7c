//! `mount -t scoutfs` and `umount` through the helpers (ARCHITECTURE
//! §2.11): mount returns once the daemon serves the mount; bad options
//! fail with a clear message and leave nothing behind; `umount DIR` is
//! refused while busy and otherwise returns only after the daemon has
//! committed, said farewell and exited; `umount -f` kills the daemon
//! without a farewell; after `kill -9` of the daemon a plain mount comes
//! up on its own with fsync'd files intact. `mount -o remount` switches
//! ro/rw and refuses changes of scoutfs options, naming them.
//!
//! mount(8) and umount(8) look for helpers in /sbin only, so each test
//! installs `/sbin/mount.scoutfs`, `/sbin/mount.fuse.scoutfs` and
//! `/sbin/umount.fuse.scoutfs` as
//! symlinks to this build's `scoutfsd` and removes them when it ends (the
//! tests run one at a time). Needs root and /dev/fuse; skipped otherwise,
//! and also when those helpers already exist and are not symlinks to us.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuse_frontend::control::client::Client;
use fuse_frontend::control::sock;
use support::{mount_entry, skip_without_fuse, Volume, SCOUTFSD};

const HELPERS: [&str; 3] = [
    "/sbin/mount.scoutfs",
    "/sbin/mount.fuse.scoutfs",
    "/sbin/umount.fuse.scoutfs",
];

/// One test at a time owns /sbin's helpers.
static SBIN: Mutex<()> = Mutex::new(());

/// The installed helpers; removed on drop.
struct Installed {
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Installed {
    fn new(test: &str) -> Option<Installed> {
        if skip_without_fuse(test) {
            return None;
        }
        let lock = SBIN.lock().unwrap_or_else(|p| p.into_inner());
        for h in HELPERS {
            match fs::read_link(h) {
                Ok(t) if t == Path::new(SCOUTFSD) => {}
                Ok(_) | Err(_) if Path::new(h).exists() || fs::symlink_metadata(h).is_ok() => {
                    eprintln!("SKIPPED {test}: {h} exists and is not ours");
                    return None;
                }
                _ => std::os::unix::fs::symlink(SCOUTFSD, h).expect("install helper"),
            }
        }
        Some(Installed { _lock: lock })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for h in HELPERS {
            let _ = fs::remove_file(h);
        }
    }
}

fn mount(v: &Volume, opts: &str) -> Output {
    Command::new("mount")
        .args(["-t", "scoutfs", "-o", opts])
        .arg(&v.data)
        .arg(&v.mnt)
        .output()
        .expect("run mount")
}

fn umount(args: &[&str], dir: &Path) -> Output {
    Command::new("umount")
        .args(args)
        .arg(dir)
        .output()
        .expect("run umount")
}

fn meta_opt(v: &Volume) -> String {
    format!("metadev_path={},quorum_slot_nr=0", v.meta.display())
}

/// Whether a daemon still holds the images (their exclusive open).
fn images_held(v: &Volume) -> bool {
    let excl = drivers::OpenOptions::new().exclusive(true);
    drivers::FileDevice::open(&v.meta, &excl).is_err()
}

fn wait_released(v: &Volume) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while images_held(v) {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts whatever is left (a failed test).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if mount_entry(&self.0).is_some() {
            let _ = Command::new("umount").arg("-f").arg(&self.0).status();
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn status_dirs() -> Vec<String> {
    fs::read_dir(sock::run_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "by-dev")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mount_and_umount_hand_off_to_the_daemon() {
    let Some(_h) = Installed::new("mount_and_umount_hand_off_to_the_daemon") else {
        return;
    };
    let v = Volume::new();
    let _c = Cleanup(v.mnt.clone());
    let out = mount(&v, &meta_opt(&v));
    assert!(out.status.success(), "{out:?}");
    // Returned only once served: the mount answers right away.
    let entry = mount_entry(&v.mnt).expect("mounted");
    assert!(entry.contains(" fuse.scoutfs "), "{entry}");
    fs::write(v.mnt.join("kept"), b"kept across umount").unwrap();
    let client = Client::for_path(&v.mnt).unwrap();
    let hello = client.hello().unwrap();
    assert_eq!(hello.mountpoint, v.mnt.canonicalize().unwrap());
    let status = sock::run_dir().join(&client.ident);
    assert_eq!(
        fs::read_to_string(status.join("mount_options/quorum_slot_nr")).unwrap(),
        "0\n"
    );

    // Busy: the daemon reports EBUSY and stays.
    let busy = fs::File::open(v.mnt.join("kept")).unwrap();
    let out = umount(&[], &v.mnt);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("target is busy"),
        "{out:?}"
    );
    assert!(mount_entry(&v.mnt).is_some());
    drop(busy);

    // umount returns after farewell and exit: the images are free at once.
    let out = umount(&[], &v.mnt);
    assert!(out.status.success(), "{out:?}");
    assert!(mount_entry(&v.mnt).is_none());
    assert!(!images_held(&v), "umount returned before the daemon exited");
    assert!(!status.exists(), "status tree left behind");
    assert!(!sock::process_alive(hello.pid as i32));
    v.assert_clean("after umount");

    let out = mount(&v, &meta_opt(&v));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(v.mnt.join("kept")).unwrap(), b"kept across umount");
    assert!(umount(&[], &v.mnt).status.success());
}

#[test]
fn bad_options_fail_clearly_and_leave_nothing_behind() {
    let Some(_h) = Installed::new("bad_options_fail_clearly_and_leave_nothing_behind") else {
        return;
    };
    let v = Volume::new();
    let _c = Cleanup(v.mnt.clone());
    let before = status_dirs();
    let meta = v.meta.display().to_string();
    let data = v.data.display().to_string();
    let cases = [
        (
            "quorum_slot_nr=0".to_string(),
            "metadev_path=PATH mount option is required",
        ),
        (
            format!("metadev_path={meta},bogus"),
            "unknown mount option 'bogus'",
        ),
        (
            format!("metadev_path={meta},quorum_slot_nr=15"),
            "out of range",
        ),
        (
            format!("metadev_path={meta},quorum_slot_nr=2"),
            "not a configured quorum slot",
        ),
        (
            format!("metadev_path={meta},lock_idle_count=5"),
            "lock_idle_count value 5 is out of range",
        ),
        (format!("metadev_path={data}"), "are the same device"),
        (
            format!("metadev_path={}/missing", v.dir.path().display()),
            "No such file or directory",
        ),
    ];
    for (opts, msg) in &cases {
        let out = mount(&v, opts);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(32), "{opts}: {out:?}");
        assert!(err.contains(msg), "{opts}: {err}");
        assert!(mount_entry(&v.mnt).is_none(), "{opts}: mounted");
        assert!(!images_held(&v), "{opts}: a daemon was left");
    }
    // Swapped devices.
    let out = Command::new("mount")
        .args(["-t", "scoutfs", "-o"])
        .arg(format!("metadev_path={data}"))
        .arg(&v.meta)
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(32));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("swapped"),
        "{out:?}"
    );
    assert!(mount_entry(&v.mnt).is_none());
    assert_eq!(status_dirs(), before);
}

#[test]
fn umount_force_kills_without_farewell_and_kill_9_remounts() {
    let Some(_h) = Installed::new("umount_force_kills_without_farewell_and_kill_9_remounts") else {
        return;
    };
    let v = Volume::new();
    let _c = Cleanup(v.mnt.clone());
    assert!(mount(&v, &meta_opt(&v)).status.success());
    {
        let mut f = fs::File::create(v.mnt.join("synced")).unwrap();
        f.write_all(b"fsync'd before -f").unwrap();
        f.sync_all().unwrap();
    }
    let pid = Client::for_path(&v.mnt).unwrap().hello().unwrap().pid as i32;
    let out = umount(&["-f"], &v.mnt);
    assert!(out.status.success(), "{out:?}");
    assert!(mount_entry(&v.mnt).is_none());
    assert!(!sock::process_alive(pid), "umount -f left the daemon");
    wait_released(&v);

    // Mount again: the killed mount's fsync'd data is there.
    assert!(mount(&v, &meta_opt(&v)).status.success());
    assert_eq!(
        fs::read(v.mnt.join("synced")).unwrap(),
        b"fsync'd before -f"
    );
    {
        let mut f = fs::File::create(v.mnt.join("synced2")).unwrap();
        f.write_all(b"fsync'd before kill -9").unwrap();
        f.sync_all().unwrap();
    }
    let client = Client::for_path(&v.mnt).unwrap();
    let pid = client.hello().unwrap().pid as i32;
    // SAFETY: kill with a pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_released(&v);
    // The dead mount stays until someone mounts again: no manual repair.
    let out = mount(&v, &meta_opt(&v));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read(v.mnt.join("synced2")).unwrap(),
        b"fsync'd before kill -9"
    );
    assert_eq!(
        fs::read(v.mnt.join("synced")).unwrap(),
        b"fsync'd before -f"
    );
    // The killed daemon's status tree was cleaned by the new one.
    assert!(!sock::run_dir().join(&client.ident).exists());
    assert_eq!(
        fs::metadata(v.mnt.join("synced2")).unwrap().size(),
        "fsync'd before kill -9".len() as u64
    );
    assert!(umount(&[], &v.mnt).status.success());
    v.assert_clean("after kill -9 and a clean umount");
}

#[test]
fn a_mount_whose_helper_dies_leaves_nothing_mounted() {
    let Some(_h) = Installed::new("a_mount_whose_helper_dies_leaves_nothing_mounted") else {
        return;
    };
    let v = Volume::new();
    let _c = Cleanup(v.mnt.clone());
    // SIGKILL the helper right away, over and over: whenever it dies before
    // the daemon reported, nothing may stay mounted.
    for delay_ms in [0u64, 5, 20, 50] {
        let mut child = Command::new("/sbin/mount.scoutfs")
            .arg(&v.data)
            .arg(&v.mnt)
            .arg("-o")
            .arg(meta_opt(&v))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            // It finished first: a normal mount.
            assert!(mount_entry(&v.mnt).is_some());
            assert!(umount(&[], &v.mnt).status.success());
            continue;
        }
        // Either nothing is mounted, or the daemon had already reported
        // (the helper died on its way out) and serves the mount: never a
        // mount without its daemon.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if mount_entry(&v.mnt).is_none() && !images_held(&v) {
                break;
            }
            if mount_entry(&v.mnt).is_some() {
                if let Ok(c) = Client::for_path(&v.mnt) {
                    if c.hello().is_ok() {
                        assert!(umount(&[], &v.mnt).status.success());
                        continue;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "a mount without its daemon after the helper died at {delay_ms} ms"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    v.assert_clean("after killed helpers");
}

fn remount(dir: &Path, opts: &str) -> Output {
    Command::new("mount")
        .args(["-o", &format!("remount,{opts}")])
        .arg(dir)
        .output()
        .expect("run mount -o remount")
}

fn mount_opts(dir: &Path) -> String {
    let e = mount_entry(dir).expect("mounted");
    e.split_whitespace().nth(3).unwrap_or_default().to_string()
}

#[test]
fn remount_switches_ro_rw_and_refuses_option_changes() {
    let Some(_h) = Installed::new("remount_switches_ro_rw_and_refuses_option_changes") else {
        return;
    };
    let v = Volume::new();
    let _c = Cleanup(v.mnt.clone());
    let out = mount(&v, &format!("{},lock_idle_count=100", meta_opt(&v)));
    assert!(out.status.success(), "{out:?}");
    let f = v.mnt.join("f");
    fs::write(&f, b"before").unwrap();

    // Read-only: writes fail with EROFS, reads work; then back to rw.
    let out = remount(&v.mnt, "ro");
    assert!(out.status.success(), "{out:?}");
    assert!(
        mount_opts(&v.mnt).starts_with("ro,"),
        "{}",
        mount_opts(&v.mnt)
    );
    let e = fs::write(&f, b"ro").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read(&f).unwrap(), b"before");
    // The control socket's changes are refused too (quota rules need no
    // file opened for writing); read-only requests still work.
    let client = Client::for_path(&v.mnt).unwrap();
    let rule = [0u8; fuse_frontend::control::proto::QUOTA_RULE_BYTES];
    let e = client.quota_change(&rule, true).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    client.statfs().unwrap();
    let out = remount(&v.mnt, "rw");
    assert!(out.status.success(), "{out:?}");
    assert!(mount_opts(&v.mnt).starts_with("rw,"));
    fs::write(&f, b"after").unwrap();
    // Writable again: the same rule goes in, and out.
    client.quota_change(&rule, true).unwrap();
    client.quota_change(&rule, false).unwrap();

    // Busy: no read-only remount while a file is open for writing.
    let w = fs::OpenOptions::new().write(true).open(&f).unwrap();
    let out = remount(&v.mnt, "ro");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy"), "{out:?}");
    drop(w);

    // scoutfs options: the mounted value is fine, another one is not.
    let out = remount(&v.mnt, "lock_idle_count=100,acl,quorum_slot_nr=0");
    assert!(out.status.success(), "{out:?}");
    for (opt, want) in [
        (
            "lock_idle_count=200",
            "mount.fuse.scoutfs: option 'lock_idle_count=200' cannot be changed by remount \
             (mounted with lock_idle_count=100)",
        ),
        (
            "noacl",
            "mount.fuse.scoutfs: option 'noacl' cannot be changed by remount (mounted with acl)",
        ),
        (
            "lock_idle_count=5",
            "mount.fuse.scoutfs: lock_idle_count value 5 is out of range (32..=100000)",
        ),
        (
            "bogus=1",
            "mount.fuse.scoutfs: unknown mount option 'bogus=1'",
        ),
    ] {
        let out = remount(&v.mnt, &format!("ro,{opt}"));
        assert_eq!(out.status.code(), Some(32), "{opt}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{opt}: {err}");
        // Nothing changed, not even the ro that came with it.
        assert!(mount_opts(&v.mnt).starts_with("rw,"), "{opt}");
    }
    assert!(umount(&[], &v.mnt).status.success());
    wait_released(&v);
    v.assert_clean("after remounts");
}
