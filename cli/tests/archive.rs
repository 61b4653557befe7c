//! Issue 8 acceptance through the real interface: the `scoutfs` binary
//! against a live FUSE mount, with readers as separate processes.
//!
//! * An archive agent's cycle: write files, find them with `walk-inodes
//!   data_seq`, record data_version, copy them out, release them; a reader
//!   blocks until `stage` (run by another process) brings the data back,
//!   then the content compares equal and data_version is unchanged; a stage
//!   with a stale data_version fails with ESTALE.
//! * `data-wait-err` makes a blocked reader fail with EIO; a blocked reader
//!   killed with SIGKILL goes away, leaves no waiter, and the mount keeps
//!   working.
//! * Retention: every change to a retained file fails with EPERM except
//!   non-`user.` xattrs and clearing the bit.
//! * Stubs (`setattr`), `punch-offline`, `move-blocks` errors, `get-fiemap`
//!   offline flags, and the status-tree counters.
//!
//! Every role names the mount it works through (`Roles`): the cycle and the
//! blocked-reader tests run once on one mount and once with the writer,
//! stager and reader on three mounts of one volume (issue 8's cluster
//! acceptance: a read on mount 2 blocks until mount 1 stages).
//!
//! Needs root and /dev/fuse: without them each test prints `SKIPPED …`.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuse_frontend::control::client::Client;
use fuse_frontend::control::proto::{Enc, Op};
use fuse_frontend::control::sock;
use support::*;

/// How long a condition may take to show (a generous bound, not a timing).
const DEADLINE: Duration = Duration::from_secs(30);

/// The mount each role works through.
struct Roles {
    writer: PathBuf,
    reader: PathBuf,
    stager: PathBuf,
}

impl Roles {
    fn single(v: &Mounted) -> Roles {
        Roles {
            writer: v.mnt.clone(),
            reader: v.mnt.clone(),
            stager: v.mnt.clone(),
        }
    }

    /// Writer, stager and reader on mounts 0, 1 and 2 of one volume.
    fn three(c: &Cluster) -> Roles {
        Roles {
            writer: c.mnts[0].clone(),
            stager: c.mnts[1].clone(),
            reader: c.mnts[2].clone(),
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stat_field(p: &Path, field: &str) -> u64 {
    ok(&["stat", "-s", field, s(p)]).trim().parse().unwrap()
}

/// `data-waiting` rows of the mount.
fn waiting(mnt: &Path) -> Vec<String> {
    ok(&["data-waiting", "-p", s(mnt)])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `cat FILE` as its own process, output captured.
fn reader(p: &Path) -> Child {
    Command::new("cat")
        .arg(p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child to exit without consuming its output.
fn exited(c: &mut Child) -> bool {
    c.try_wait().unwrap().is_some()
}

/// A counter of the mount's status tree (rewritten once a second).
fn counter(mnt: &Path, name: &str) -> u64 {
    let ident = sock::ident_of_path(mnt).unwrap().unwrap();
    std::fs::read_to_string(sock::run_dir().join(ident).join("counters").join(name))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn released_files_block_readers_until_staged_with_the_same_data_version() {
    if skip("released_files_block_readers_until_staged_with_the_same_data_version") {
        return;
    }
    let mut v = Mounted::new();
    archive_cycle(&Roles::single(&v));
    v.unmount();
}

#[test]
fn archive_cycle_across_three_mounts() {
    if skip("archive_cycle_across_three_mounts") {
        return;
    }
    let mut c = Cluster::new();
    archive_cycle(&Roles::three(&c));
    c.unmount();
}

/// Write, find, release, block a reader, stage (stale first), compare.
fn archive_cycle(r: &Roles) {
    let archive = tempfile::tempdir().unwrap();
    // The writer's files: whole blocks, a partial last block, one block.
    let sizes = [64 * 4096, 5 * 4096 + 17, 4096];
    let mut files = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let p = r.writer.join(format!("f{i}"));
        let data = pattern(i as u8, *len);
        std::fs::write(&p, &data).unwrap();
        files.push((p, data));
    }
    ok(&["sync", "-p", s(&r.writer)]);
    // The agent finds them in the data_seq index …
    let walk = ok(&["walk-inodes", "data_seq", "0", "-1", s(&r.writer)]);
    let inos: Vec<u64> = walk
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    let mut dvs = Vec::new();
    for (p, data) in &files {
        let ino = std::fs::metadata(p).unwrap().ino();
        assert!(inos.contains(&ino), "{ino} not in {walk}");
        // … records data_version, archives the content and releases it.
        let dv = stat_field(p, "data_version");
        assert_eq!(ok(&["get-attr-x", "-v", s(p)]).trim(), dv.to_string());
        let copy = archive.path().join(p.file_name().unwrap());
        std::fs::write(&copy, data).unwrap();
        let mtime = std::fs::metadata(p).unwrap().mtime_nsec();
        let stale = scoutfs(&["release", s(p), "-V", &(dv + 1).to_string()]);
        assert_eq!(stale.status.code(), Some(1));
        assert_eq!(
            stderr(&stale),
            "release ioctl failed: Stale file handle (116)\n\
             scoutfs: release failed: Stale file handle (116)\n"
        );
        ok(&["release", s(p), "-V", &dv.to_string()]);
        let blocks = (data.len() as u64).div_ceil(4096);
        assert_eq!(stat_field(p, "offline_blocks"), blocks);
        assert_eq!(stat_field(p, "online_blocks"), 0);
        assert_eq!(stat_field(p, "data_version"), dv);
        assert_eq!(std::fs::metadata(p).unwrap().mtime_nsec(), mtime);
        assert_eq!(std::fs::metadata(p).unwrap().blocks(), blocks * 8);
        let fiemap = ok(&["get-fiemap", s(p)]);
        assert_eq!(
            fiemap,
            format!("0: offset: 0 0 length: {blocks} flags: O.L\nextents: 1\n")
        );
        dvs.push(dv);
    }
    // A reader (through its mount) blocks on the first file.
    let (p0, d0) = &files[0];
    let rp = r.reader.join(p0.file_name().unwrap());
    let ino0 = std::fs::metadata(&rp).unwrap().ino();
    let mut cat = reader(&rp);
    wait_for("the reader to wait", || {
        waiting(&r.reader) == vec![format!("ino {ino0} iblock 0 ops read")]
    });
    assert!(!exited(&mut cat), "reader returned before staging");
    // A stale stage fails and leaves it waiting.
    let sp = r.stager.join(p0.file_name().unwrap());
    let copy0 = archive.path().join(p0.file_name().unwrap());
    let stale = scoutfs(&["stage", s(&copy0), s(&sp), "-V", &(dvs[0] + 7).to_string()]);
    assert_eq!(stale.status.code(), Some(1));
    assert_eq!(
        stderr(&stale),
        "stage returned -1, not 61440: error Stale file handle (116)\n\
         scoutfs: stage failed: Stale file handle (116)\n"
    );
    assert!(!exited(&mut cat));
    // Stage from a pipe, as archive agents do.
    let mut feed = Command::new(SCOUTFS)
        .args(["stage", "/dev/stdin", s(&sp), "-V", &dvs[0].to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    feed.stdin.take().unwrap().write_all(d0).unwrap();
    assert!(feed.wait().unwrap().success());
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout == *d0, "staged content differs");
    assert_eq!(stat_field(p0, "data_version"), dvs[0]);
    assert_eq!(stat_field(p0, "offline_blocks"), 0);
    assert!(waiting(&r.reader).is_empty());
    // The others, staged from files, read back equal.
    for (i, (p, data)) in files.iter().enumerate().skip(1) {
        let copy = archive.path().join(p.file_name().unwrap());
        ok(&["stage", s(&copy), s(p), "-V", &dvs[i].to_string()]);
        assert_eq!(std::fs::read(p).unwrap(), *data);
        assert_eq!(stat_field(p, "data_version"), dvs[i]);
    }
    wait_for("the counters", || {
        counter(&r.reader, "data_wait") >= 1
            && counter(&r.writer, "release") == 3
            && counter(&r.stager, "stage") >= 1
            && counter(&r.reader, "data_wait_woken") >= 1
    });
}

#[test]
fn blocked_readers_fail_with_data_wait_err_and_can_be_killed() {
    if skip("blocked_readers_fail_with_data_wait_err_and_can_be_killed") {
        return;
    }
    let mut v = Mounted::new();
    blocked_readers(&Roles::single(&v));
    v.unmount();
}

#[test]
fn blocked_readers_on_another_mount_fail_with_data_wait_err_and_can_be_killed() {
    if skip("blocked_readers_on_another_mount_fail_with_data_wait_err_and_can_be_killed") {
        return;
    }
    let mut c = Cluster::new();
    blocked_readers(&Roles::three(&c));
    c.unmount();
}

/// data-wait-err fails a blocked reader with EIO; a blocked reader can be
/// killed; a blocked writer waits too.
fn blocked_readers(r: &Roles) {
    let p = r.writer.join("f");
    let data = pattern(9, 3 * 4096);
    std::fs::write(&p, &data).unwrap();
    let dv = stat_field(&p, "data_version");
    ok(&["release", s(&p), "-V", &dv.to_string()]);
    let ino = std::fs::metadata(&p).unwrap().ino();

    // data-wait-err: EIO for the blocked reader.
    let cat = reader(&r.reader.join("f"));
    wait_for("the reader to wait", || waiting(&r.reader).len() == 1);
    let denied = Command::new(SCOUTFS)
        .args(["data-wait-err", "-p", s(&r.reader)])
        .args(["-I", &ino.to_string(), "-V", &dv.to_string()])
        .args(["-F", "0", "-C", "12288", "-O", "read", "-E", "-5"])
        .output()
        .unwrap();
    assert!(denied.status.success(), "{denied:?}");
    assert_eq!(stdout(&denied), "data_wait_err found 1 waiters.\n");
    let out = cat.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{out:?}"
    );
    assert!(waiting(&r.reader).is_empty());
    // A stale data_version finds nothing to fail.
    let stale = scoutfs(&[
        "data-wait-err",
        "-p",
        s(&r.reader),
        "-I",
        &ino.to_string(),
        "-V",
        "999",
        "-F",
        "0",
        "-C",
        "4096",
        "-O",
        "read",
        "-E",
        "-5",
    ]);
    assert_eq!(stale.status.code(), Some(1));

    // SIGKILL: the reader goes, its waiter with it.
    let mut cat = reader(&r.reader.join("f"));
    wait_for("the reader to wait", || waiting(&r.reader).len() == 1);
    cat.kill().unwrap();
    let end = Instant::now() + DEADLINE;
    while !exited(&mut cat) {
        if Instant::now() > end {
            // Unblock it so the test can fail instead of hanging.
            let copy = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(copy.path(), &data).unwrap();
            let _ = scoutfs(&["stage", s(copy.path()), s(&p), "-V", &dv.to_string()]);
            panic!("a killed reader stayed blocked");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for("the killed reader's waiter to go", || {
        waiting(&r.reader).is_empty()
    });
    wait_for("the counter", || {
        counter(&r.reader, "data_wait_interrupted") >= 1
    });
    // The mount keeps working: other files, then the staged one.
    let q = r.writer.join("g");
    std::fs::write(&q, b"still here").unwrap();
    assert_eq!(std::fs::read(&q).unwrap(), b"still here");
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(copy.path(), &data).unwrap();
    ok(&["stage", s(copy.path()), s(&p), "-V", &dv.to_string()]);
    assert_eq!(std::fs::read(&p).unwrap(), data);
    // A writer waits for the whole file, then writes; data_version moves.
    let dv = stat_field(&p, "data_version");
    ok(&[
        "release",
        s(&p),
        "-V",
        &dv.to_string(),
        "-o",
        "8192",
        "-l",
        "4096",
    ]);
    // The blocked writer works through the reader's mount.
    let rp = r.reader.join("f");
    let mut dd = Command::new("dd")
        .arg(format!("of={}", s(&rp)))
        .args(["bs=4", "count=1", "conv=notrunc", "status=none"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    dd.stdin.take().unwrap().write_all(b"abcd").unwrap();
    wait_for("the writer to wait", || {
        waiting(&r.reader) == vec![format!("ino {ino} iblock 2 ops write")]
    });
    std::fs::write(copy.path(), &data[8192..]).unwrap();
    ok(&[
        "stage",
        s(copy.path()),
        s(&p),
        "-V",
        &dv.to_string(),
        "-o",
        "8192",
    ]);
    assert!(dd.wait().unwrap().success());
    let mut want = data.clone();
    want[..4].copy_from_slice(b"abcd");
    assert_eq!(std::fs::read(&p).unwrap(), want);
    assert_eq!(stat_field(&p, "data_version"), dv + 1);
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn retained_files_refuse_every_change_but_the_allowed_ones() {
    if skip("retained_files_refuse_every_change_but_the_allowed_ones") {
        return;
    }
    let mut v = Mounted::new();
    let p = v.path("kept");
    std::fs::write(&p, b"keep me").unwrap();
    set_xattr(&p, "user.a", b"1").unwrap();
    let dir = v.path("d");
    std::fs::create_dir(&dir).unwrap();
    let o = scoutfs(&["set-attr-x", "-t", "1", s(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with(&format!(
        "attr_x ioctl failed on '{}': Invalid argument (22)\n",
        s(&dir)
    )));
    ok(&["set-attr-x", "-t", "1", s(&p)]);
    assert_eq!(ok(&["get-attr-x", "-t", s(&p)]), "1\n");
    let dv = stat_field(&p, "data_version");
    let eperm = libc::EPERM;
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    assert_eq!(errno_of(f.write_all(b"x")), eperm);
    assert_eq!(errno_of(f.set_len(0)), eperm);
    drop(f);
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
        ),
        eperm
    );
    assert_eq!(
        errno_of(std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(0o600)
        )),
        eperm
    );
    assert_eq!(errno_of(std::fs::remove_file(&p)), eperm);
    assert_eq!(errno_of(std::fs::rename(&p, v.path("moved"))), eperm);
    assert_eq!(errno_of(std::fs::hard_link(&p, v.path("second"))), eperm);
    std::fs::write(v.path("other"), b"o").unwrap();
    assert_eq!(errno_of(std::fs::rename(v.path("other"), &p)), eperm);
    assert_eq!(errno_of(set_xattr(&p, "user.b", b"2")), eperm);
    let rel = scoutfs(&["release", s(&p), "-V", &dv.to_string()]);
    assert_eq!(
        stderr(&rel),
        "release ioctl failed: Operation not permitted (1)\n\
         scoutfs: release failed: Operation not permitted (1)\n"
    );
    let proj = scoutfs(&["set-attr-x", "-p", "3", s(&p)]);
    assert_eq!(proj.status.code(), Some(1));
    // Allowed: reading, non-user xattrs, and clearing the bit.
    assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
    set_xattr(&p, "trusted.t", b"1").unwrap();
    ok(&["set-attr-x", "-t", "0", s(&p)]);
    assert_eq!(ok(&["get-attr-x", "-t", s(&p)]), "0\n");
    std::fs::write(&p, b"changed").unwrap();
    std::fs::remove_file(&p).unwrap();
    wait_for("the counter", || counter(&v.mnt, "retention_denied") >= 10);
    v.unmount();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = std::ffi::CString::new(s(p)).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer for the call.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn stubs_punch_move_blocks_and_the_open_file_rules() {
    if skip("stubs_punch_move_blocks_and_the_open_file_rules") {
        return;
    }
    let mut v = Mounted::new();
    // A stub restored on a new empty file: offline from 0 to its size.
    let stub = v.path("stub");
    std::fs::File::create(&stub).unwrap();
    let bad = scoutfs(&["setattr", "-V", "0", "-s", "10", s(&stub)]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).starts_with("setattr: data version must not be 0\n"));
    let bad = scoutfs(&["setattr", "-V", "3", "-o", s(&stub)]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).starts_with("setattr: must provide size if using --offline option\n"));
    ok(&[
        "setattr",
        "-V",
        "3",
        "-s",
        "20000",
        "-o",
        "-t",
        "100.5",
        "-r",
        "50.000000007",
        s(&stub),
    ]);
    let attrs = ok(&["get-attr-x", s(&stub)]);
    for want in [
        "data_version      3\n",
        "offline_blocks    5\n",
        "online_blocks     0\n",
        "size              20000\n",
        "ctime             100.500000000\n",
        "crtime            50.000000007\n",
        "retention         0\n",
    ] {
        assert!(attrs.contains(want), "{want:?} not in {attrs}");
    }
    assert_eq!(std::fs::metadata(&stub).unwrap().len(), 20000);
    let again = scoutfs(&["setattr", "-V", "4", s(&stub)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with(&format!(
        "setattr_more ioctl failed on '{}': Invalid argument (22)\n",
        s(&stub)
    )));
    // punch-offline: the middle becomes sparse (a sparse restore).
    let punch = |off: &str, len: &str, dv: &str| {
        scoutfs(&["punch-offline", s(&stub), "-V", dv, "-o", off, "-l", len])
    };
    assert_eq!(punch("1", "4096", "3").status.code(), Some(1));
    assert!(stderr(&punch("0", "4096", "4")).contains("Stale file handle (116)"));
    let o = punch("0xfffffffffffff000", "8192", "3");
    assert!(
        stderr(&o).contains("Value too large for defined data type (75)"),
        "{o:?}"
    );
    assert!(punch("4096", "8192", "3").status.success());
    assert_eq!(
        ok(&["get-fiemap", s(&stub)]),
        "0: offset: 0 0 length: 1 flags: O..\n1: offset: 3 0 length: 2 flags: O.L\nextents: 2\n"
    );
    assert_eq!(stat_field(&stub, "offline_blocks"), 3);

    // move-blocks.
    let from = v.path("from");
    let data = pattern(4, 2 * 4096 + 10);
    std::fs::write(&from, &data).unwrap();
    let to = v.path("to");
    std::fs::File::create(&to).unwrap();
    let mv = |args: &[&str]| {
        let mut a = vec!["move-blocks"];
        a.extend_from_slice(args);
        scoutfs(&a)
    };
    let o = mv(&[s(&from), "-f", "0", "-l", "100", s(&to), "-t", "0"]);
    assert_eq!(
        stderr(&o),
        format!(
            "ioctl failed on '{}': Invalid argument (22)\n\
             scoutfs: move-blocks failed: Invalid argument (22)\n",
            s(&to)
        )
    );
    let o = mv(&[
        s(&from),
        "-f",
        "0",
        "-l",
        "4096",
        s(&to),
        "-t",
        "0xfffffffffffff000",
    ]);
    assert!(
        stderr(&o).contains("Value too large for defined data type (75)"),
        "{o:?}"
    );
    let outside = tempfile::NamedTempFile::new().unwrap();
    let o = mv(&[
        s(outside.path()),
        "-f",
        "0",
        "-l",
        "4096",
        s(&to),
        "-t",
        "0",
    ]);
    assert!(
        stderr(&o).contains("Invalid cross-device link (18)"),
        "{o:?}"
    );
    let o = mv(&[s(&stub), "-f", "0", "-l", "4096", s(&to), "-t", "0"]);
    assert!(stderr(&o).contains("No data available (61)"), "{o:?}");
    let len = data.len().to_string();
    ok(&[
        "move-blocks",
        s(&from),
        "-f",
        "0",
        "-l",
        &len,
        s(&to),
        "-t",
        "0",
    ]);
    assert_eq!(std::fs::read(&to).unwrap(), data);
    assert_eq!(stat_field(&from, "online_blocks"), 0);
    // With STAGE: the destination's offline blocks fill in, its version stays.
    let dst = v.path("dst");
    let content = pattern(5, 3 * 4096);
    std::fs::write(&dst, &content).unwrap();
    let dv = stat_field(&dst, "data_version");
    ok(&["release", s(&dst), "-V", &dv.to_string()]);
    let src = v.path("src");
    std::fs::write(&src, &content).unwrap();
    let stale = mv(&[
        s(&src),
        "-f",
        "0",
        "-l",
        "12288",
        s(&dst),
        "-t",
        "0",
        "-s",
        "-V",
        "999",
    ]);
    assert!(
        stderr(&stale).contains("Stale file handle (116)"),
        "{stale:?}"
    );
    ok(&[
        "move-blocks",
        s(&src),
        "-f",
        "0",
        "-l",
        "12288",
        s(&dst),
        "-t",
        "0",
        "-s",
        "-V",
        &dv.to_string(),
    ]);
    assert_eq!(std::fs::read(&dst).unwrap(), content);
    assert_eq!(stat_field(&dst, "data_version"), dv);

    // The file description rules, through the socket directly.
    let f = std::fs::File::open(&dst).unwrap();
    let c = Client::for_file(&f).unwrap();
    let ro = OwnedFd::from(f);
    assert_eq!(errno_of(c.release(&ro, 0, 4096, dv)), libc::EINVAL);
    // Wrong descriptor counts and short bodies are refused.
    let rw = OwnedFd::from(std::fs::OpenOptions::new().write(true).open(&dst).unwrap());
    let mut mb = Enc::request(Op::MoveBlocks);
    mb.u64(0).u64(4096).u64(0).u64(0).u32(0);
    assert_eq!(errno_of(c.call_fds(&mb, &[&rw])), libc::EINVAL);
    let mut rel = Enc::request(Op::Release);
    rel.u64(0).u64(4096).u64(dv);
    assert_eq!(errno_of(c.call_fds(&rel, &[&rw, &rw])), libc::EINVAL);
    assert_eq!(errno_of(c.call_fds(&rel, &[])), libc::EINVAL);
    let mut short = Enc::request(Op::Release);
    short.u64(0);
    assert_eq!(errno_of(c.call_fds(&short, &[&rw])), libc::EINVAL);
    let mut dw = Enc::request(Op::DataWaiting);
    dw.u64(0).u64(0).u32(10);
    assert_eq!(errno_of(c.call_fds(&dw, &[&rw])), libc::EINVAL);
    assert_eq!(stat_field(&dst, "data_version"), dv, "nothing changed");
    drop(rw);
    drop(ro);
    let app = std::fs::OpenOptions::new().append(true).open(&dst).unwrap();
    assert_eq!(
        errno_of(c.stage(&OwnedFd::from(app), dv, 0, &[0; 4096])),
        libc::EINVAL
    );
    let sync = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&dst)
        .unwrap();
    assert_eq!(
        errno_of(c.stage(&OwnedFd::from(sync), dv, 0, &[0; 4096])),
        libc::EINVAL
    );
    // data-wait-err needs CAP_SYS_ADMIN, like its ioctl (we are root: the
    // argument checks answer).
    let bad = scoutfs(&[
        "data-wait-err",
        "-p",
        s(&v.mnt),
        "-I",
        "1",
        "-V",
        "0",
        "-F",
        "0",
        "-C",
        "0",
        "-O",
        "read",
        "-E",
        "-5",
    ]);
    assert!(stderr(&bad).contains("Invalid argument (22)"), "{bad:?}");
    v.unmount();
}

#[test]
fn more_blocked_readers_than_fuse_workers_do_not_wedge_the_mount() {
    if skip("more_blocked_readers_than_fuse_workers_do_not_wedge_the_mount") {
        return;
    }
    let mut v = Mounted::new();
    let r = Roles::single(&v);
    let p = r.writer.join("f");
    let data = pattern(21, 4096);
    std::fs::write(&p, &data).unwrap();
    let dv = stat_field(&p, "data_version");
    ok(&["release", s(&p), "-V", &dv.to_string()]);
    // Twice the daemon's default worker count, each holding a request.
    let readers = 2 * fuse_frontend::daemon::WORKERS_DEFAULT;
    let mut cats: Vec<Child> = (0..readers).map(|_| reader(&r.reader.join("f"))).collect();
    let ino = std::fs::metadata(&p).unwrap().ino();
    wait_for("every reader to wait", || {
        counter(&v.mnt, "data_wait") >= readers as u64
            && waiting(&r.reader) == vec![format!("ino {ino} iblock 0 ops read")]
    });
    // The stager still gets a worker for its open and the mount answers.
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(copy.path(), &data).unwrap();
    ok(&[
        "stage",
        s(copy.path()),
        s(&r.stager.join("f")),
        "-V",
        &dv.to_string(),
    ]);
    for c in cats.drain(..) {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success() && out.stdout == data, "{out:?}");
    }
    v.unmount();
}
