//! The `scoutfs` commands that talk to a live mount through its control
//! socket, with exact output: the seed's quick start (`touch one; sync;
//! scoutfs walk-inodes meta_seq 0 -1 MNT` shows each touched inode at its
//! new meta_seq after every plain sync), walk-inodes on data_seq, stat,
//! statfs, df, sync, ino-path, get-referring-entries, get-allocated-inos,
//! get-fiemap and counters, plus the errors scripts see.
//!
//! The daemon runs in this test process (`fuse_frontend::serve` on a
//! thread) and the commands run as the real `scoutfs` binary. Needs root
//! and /dev/fuse: without them each test prints `SKIPPED …: reason`.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fuse_frontend::control::client::Client;
use support::*;

const HEADER: &str = "#                    major                minor      ino                 \n";

fn row(nr: u64, major: u64, ino: u64) -> String {
    format!("{nr:<20} {major:<20} {:<10} {ino:<20}\n", 0)
}

#[test]
fn quick_start_walks_show_each_touch_at_its_new_meta_seq() {
    if skip("quick_start_walks_show_each_touch_at_its_new_meta_seq") {
        return;
    }
    let mut v = Mounted::new();
    let mnt = v.mnt.to_str().unwrap().to_string();
    // A fresh volume: only the root.
    let out = ok(&["walk-inodes", "meta_seq", "0", "-1", &mnt]);
    let rows = walk_rows(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(out, format!("{HEADER}{}", row(0, rows[0].0, 1)));

    let one = v.path("one");
    std::fs::File::create(&one).unwrap();
    plain_sync();
    let out = ok(&["walk-inodes", "meta_seq", "0", "-1", &mnt]);
    let rows = walk_rows(&out);
    let one_ino = ino(&one);
    // Root and the new file, both changed in one transaction.
    assert_eq!(rows.len(), 2, "{out}");
    let seq1 = rows[1].0;
    assert_eq!(rows, vec![(seq1, 1), (seq1, one_ino)]);
    assert_eq!(
        out,
        format!("{HEADER}{}{}", row(0, seq1, 1), row(1, seq1, one_ino))
    );

    // Touch it again: after the next plain sync it sits at a newer seq,
    // and its old entry is gone.
    let mut last = seq1;
    for round in 0..3 {
        let f = std::fs::OpenOptions::new().write(true).open(&one).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(round + 1))
            .unwrap();
        drop(f);
        plain_sync();
        let rows = walk_rows(&ok(&["walk-inodes", "meta_seq", "0", "-1", &mnt]));
        let at: Vec<u64> = rows
            .iter()
            .filter(|r| r.1 == one_ino)
            .map(|r| r.0)
            .collect();
        assert_eq!(at.len(), 1, "{rows:?}");
        assert!(at[0] > last, "round {round}: {rows:?}");
        last = at[0];
        // Walking from the new seq shows just that inode.
        let from = format!("{last}");
        let rows = walk_rows(&ok(&["walk-inodes", "meta_seq", &from, "-1", "-p", &mnt]));
        assert_eq!(rows, vec![(last, one_ino)]);
    }

    // data_seq: a write moves the file; directories never appear there.
    std::fs::write(&one, b"data").unwrap();
    plain_sync();
    let rows = walk_rows(&ok(&["walk-inodes", "data_seq", "0", "-1", &mnt]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, one_ino);
    assert!(rows[0].0 >= last);

    // Headers every 25 rows, numbering across batches.
    for i in 0..30 {
        std::fs::File::create(v.path(&format!("f{i}"))).unwrap();
    }
    let out = ok(&["walk-inodes", "meta_seq", "0", "-1", &mnt]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 32 + 2, "{out}");
    assert!(lines[0].starts_with('#') && lines[26].starts_with('#'));
    assert!(lines[27].starts_with("25 "));

    // Errors: a bad index and a bad position, argp usage.
    let o = scoutfs(&["walk-inodes", "size", "0", "-1", &mnt]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "unknown index 'size', try 'meta_seq' or 'data_seq'\n\
         scoutfs: walk-inodes failed: Invalid argument (22)\n"
    );
    let o = scoutfs(&["walk-inodes", "meta_seq", "x", "-1", &mnt]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("bad index pos at 'x'\ninvalid first position 'x'"));
    let o = scoutfs(&["walk-inodes", "meta_seq", "0"]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        stderr(&o),
        "walk-inodes: no last entry given\n\
         Try `walk-inodes --help' or `walk-inodes --usage' for more information.\n"
    );
    v.unmount();
}

#[test]
fn control_commands_print_what_the_original_prints() {
    if skip("control_commands_print_what_the_original_prints") {
        return;
    }
    let mut v = Mounted::new();
    let mnt = v.mnt.to_str().unwrap().to_string();
    let file = v.path("file");
    std::fs::write(&file, vec![7u8; 3 * 4096]).unwrap();
    std::fs::create_dir(v.path("dir")).unwrap();
    std::fs::hard_link(&file, v.path("dir/link")).unwrap();
    let fino = ino(&file);
    let dino = ino(&v.path("dir"));
    let fpath = file.to_str().unwrap();

    // sync
    assert_eq!(ok(&["sync", "-p", &mnt]), "");

    // stat: committed seqs, as the ioctl returned them.
    let out = ok(&["stat", fpath]);
    let lines: Vec<&str> = out.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| &l[..17]).collect();
    assert_eq!(
        names,
        [
            "meta_seq         ",
            "data_seq         ",
            "data_version     ",
            "online_blocks    ",
            "offline_blocks   ",
            "crtime           "
        ]
    );
    assert_eq!(lines[3], "online_blocks     3");
    assert_eq!(lines[4], "offline_blocks    0");
    let crtime = lines[5][18..].to_string();
    assert!(
        crtime.split_once('.').is_some_and(|(_, ns)| ns.len() == 9),
        "{crtime}"
    );
    assert_eq!(ok(&["stat", "-s", "crtime", fpath]), format!("{crtime}\n"));
    assert_eq!(ok(&["stat", "-s", "online_blocks", fpath]), "3\n");
    let o = scoutfs(&["stat", "-s", "nope", fpath]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "unknown field: 'nope'\nscoutfs: stat failed: Invalid argument (22)\n"
    );
    // Outside scoutfs and on a device node: ENOTTY, exit 0, no output.
    for p in ["/tmp", "/dev/null"] {
        let o = scoutfs(&["stat", p]);
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(stdout(&o), "");
        assert_eq!(
            stderr(&o),
            "ioctl failed: Inappropriate ioctl for device (25)\n"
        );
    }
    let o = scoutfs(&["stat", "/nonexistent"]);
    assert_eq!(
        stderr(&o),
        "failed to open '/nonexistent': No such file or directory (2)\n\
         scoutfs: stat failed: No such file or directory (2)\n"
    );

    // statfs: the mount's identity and the committed seq.
    let hello = Client::for_path(&v.mnt).unwrap().hello().unwrap();
    let out = ok(&["statfs", "-p", &mnt]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("fsid              {:016x}", hello.fsid));
    assert_eq!(lines[1], format!("rid               {:016x}", hello.rid));
    assert!(lines[2].starts_with("committed_seq     "));
    assert_eq!(lines[3], format!("total_meta_blocks {}", IMAGE_BYTES >> 16));
    assert_eq!(lines[4], format!("total_data_blocks {}", IMAGE_BYTES >> 12));
    assert_eq!(
        ok(&["statfs", "-s", "fsid", "-p", &mnt]),
        format!("{:016x}\n", hello.fsid)
    );

    // df: the original's table.
    let out = ok(&["df", "-p", &mnt]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    let cols: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(cols[0], ["Type", "Size", "Total", "Used", "Free", "Use%"]);
    assert_eq!(cols[1][..3], ["MetaData", "64KB", "262144"]);
    assert_eq!(cols[2][..3], ["Data", "4KB", "4194304"]);
    let used: u64 = cols[2][3].parse().unwrap();
    let free: u64 = cols[2][4].parse().unwrap();
    assert_eq!(used + free, 4194304);
    assert!(used >= 3);
    assert!(lines.iter().all(|l| l.ends_with("  ")));
    assert!(ok(&["df", "-h", "-p", &mnt]).contains("16.00 GB"));

    // ino-path (also the positional path form) and referring entries.
    let fino_s = fino.to_string();
    assert_eq!(ok(&["ino-path", &fino_s, &mnt]), "file\ndir/link\n");
    assert_eq!(ok(&["ino-path", &fino_s, "-p", &mnt]), "file\ndir/link\n");
    assert_eq!(
        ok(&["get-referring-entries", &fino_s, "-p", &mnt]),
        format!("dir 1 pos 2 type 8 name file\ndir {dino} pos 2 type 8 name link\n")
    );
    assert_eq!(
        ok(&["get-referring-entries", &dino.to_string(), "-p", &mnt]),
        "dir 1 pos 3 type 4 name dir\n"
    );
    let o = scoutfs(&["get-referring-entries", "-p", &mnt]);
    assert_eq!(o.status.code(), Some(64));

    // get-allocated-inos: the group from INO; -s only INO.
    assert_eq!(
        ok(&["get-allocated-inos", "-i", &fino_s, "-p", &mnt]),
        format!("{fino}\n{dino}\n")
    );
    assert_eq!(
        ok(&[
            "get-allocated-inos",
            "-i",
            &dino.to_string(),
            "-s",
            "-p",
            &mnt
        ]),
        format!("{dino}\n")
    );
    assert_eq!(ok(&["get-allocated-inos", "-i", "5", "-s", "-p", &mnt]), "");
    let o = scoutfs(&["get-allocated-inos", "-p", &mnt]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o)
        .starts_with("get-allocated-inos: must provide --ino starting inode number option\n"));

    // get-fiemap: one extent of three blocks.
    let out = ok(&["get-fiemap", "-L", fpath]);
    assert_eq!(out, "0: offset: 0 length: 3 flags: ..L\nextents: 1\n");
    let out = ok(&["get-fiemap", fpath]);
    let phys: u64 = out.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(
        out,
        format!("0: offset: 0 {phys} length: 3 flags: ..L\nextents: 1\n")
    );
    assert_eq!(
        ok(&["get-fiemap", "-P", "-b", fpath]),
        format!(
            "0: offset: {} length: 12288 flags: ..L\nextents: 1\n",
            phys * 4096
        )
    );
    let empty = v.path("empty");
    std::fs::File::create(&empty).unwrap();
    assert_eq!(ok(&["get-fiemap", empty.to_str().unwrap()]), "extents: 0\n");
    let o = scoutfs(&["get-fiemap", "-P", "-L", fpath]);
    assert_eq!(o.status.code(), Some(64));

    // counters: sorted `name value` lines from the status tree, found
    // from the mount path or the status directory.
    std::thread::sleep(Duration::from_millis(1200));
    let out = ok(&["counters", &mnt]);
    let names: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"trans_commits"), "{out}");
    let status_dir =
        fuse_frontend::control::sock::run_dir().join(&Client::for_path(&v.mnt).unwrap().ident);
    assert_eq!(
        ok(&["counters", status_dir.to_str().unwrap()])
            .lines()
            .count(),
        names.len()
    );
    for f in ["fsid", "rid", "pid", "mount_options/metadev_path"] {
        assert!(status_dir.join(f).is_file(), "{f}");
    }
    v.unmount();
    assert!(!status_dir.exists(), "status tree left behind");
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a value slice for the call.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn removexattr(p: &Path, name: &str) {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings for the call.
    let r = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    assert_eq!(r, 0);
}

fn scoutfs_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(SCOUTFS)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scoutfs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn xattr_tag_and_quota_commands_print_what_the_original_prints() {
    if skip("xattr_tag_and_quota_commands_print_what_the_original_prints") {
        return;
    }
    let mut v = Mounted::new();
    let mnt = v.mnt.to_str().unwrap().to_string();
    let (a, b) = (v.path("a"), v.path("b"));
    std::fs::write(&a, b"").unwrap();
    std::fs::write(&b, b"").unwrap();
    let (ia, ib) = (ino(&a), ino(&b));

    // .totl.: totals of every xattr with the same trailing name.
    setxattr(&a, "scoutfs.totl.t.1.2.3", b"10").unwrap();
    setxattr(&b, "scoutfs.totl.other.1.2.3", b"32").unwrap();
    setxattr(&b, "scoutfs.totl.t.1.2.4", b"0x10").unwrap();
    assert_eq!(
        setxattr(&b, "scoutfs.totl.t.1.2", b"1")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        ok(&["read-xattr-totals", "-p", &mnt]),
        "1.2.3 = 42, 2\n1.2.4 = 16, 1\n"
    );
    removexattr(&b, "scoutfs.totl.other.1.2.3");
    assert_eq!(
        ok(&["read-xattr-totals", "-p", &mnt]),
        "1.2.3 = 10, 1\n1.2.4 = 16, 1\n"
    );

    // .indx.: major.minor = ino, removals leave nothing behind.
    setxattr(&a, "scoutfs.indx.x.5.77", b"").unwrap();
    setxattr(&b, "scoutfs.indx.y.5.78", b"").unwrap();
    setxattr(&b, "scoutfs.indx.z.6.1", b"").unwrap();
    assert_eq!(
        ok(&["read-xattr-index", "-p", &mnt]),
        format!("5.77 = {ia}\n5.78 = {ib}\n6.1 = {ib}\n")
    );
    assert_eq!(
        ok(&["read-xattr-index", "5.78", "5", "-p", &mnt]),
        format!("5.78 = {ib}\n")
    );
    removexattr(&a, "scoutfs.indx.x.5.77");
    assert_eq!(
        ok(&["read-xattr-index", "0", "-1", "-p", &mnt]),
        format!("5.78 = {ib}\n6.1 = {ib}\n")
    );

    // .hide.: only list-hidden-xattrs names them.
    setxattr(&a, "scoutfs.hide.secret", b"v").unwrap();
    setxattr(&a, "user.plain", b"v").unwrap();
    assert_eq!(
        ok(&["list-hidden-xattrs", a.to_str().unwrap()]),
        "scoutfs.hide.secret\n"
    );
    assert_eq!(ok(&["list-hidden-xattrs", b.to_str().unwrap()]), "");

    // Quota rules: list sorted, highest first; restore reads the list.
    let r1 = "  7 13,L,- 15,L,- 17,L,- I 33 -";
    let r2 = " 10 7,L,- 0,U,- 0,L,- D 1000000 -";
    ok(&["quota-add", "-r", r1, "-p", &mnt]);
    ok(&["quota-add", "-r", r2, "-p", &mnt]);
    let o = scoutfs(&["quota-add", "-r", r1, "-p", &mnt]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).ends_with("scoutfs: quota-add failed: File exists (17)\n"),
        "{o:?}"
    );
    let listed = format!("{r2}\n{r1}\n");
    assert_eq!(ok(&["quota-list", "-p", &mnt]), listed);
    ok(&["quota-wipe", "-p", &mnt]);
    assert_eq!(ok(&["quota-list", "-p", &mnt]), "");
    let o = scoutfs_stdin(&["quota-restore", "-p", &mnt], &listed);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(ok(&["quota-list", "-p", &mnt]), listed);
    ok(&["quota-del", "-r", r2, "-p", &mnt]);
    assert_eq!(ok(&["quota-list", "-p", &mnt]), format!("{r1}\n"));
    let o = scoutfs(&["quota-add", "-r", "1 2,X,- 0,L,- 0,L,- D 1 -", "-p", &mnt]);
    assert_eq!(o.status.code(), Some(64));

    // A data rule on uid 0's total: EDQUOT at the limit, writes resume
    // once the total drops (within the mount's quota validity period).
    ok(&[
        "quota-add",
        "-r",
        "20 7,L,- 0,U,- 0,L,- D 100 -",
        "-p",
        &mnt,
    ]);
    let usage = v.path("usage");
    std::fs::write(&usage, b"").unwrap();
    setxattr(&usage, "scoutfs.totl.usage.7.0.0", b"100").unwrap();
    ok(&["sync", "-p", &mnt]);
    let c = v.path("c");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match std::fs::write(&c, [1u8; 4096]) {
            Err(e) if e.raw_os_error() == Some(libc::EDQUOT) => break,
            r => {
                assert!(std::time::Instant::now() < deadline, "no EDQUOT: {r:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    setxattr(&usage, "scoutfs.totl.usage.7.0.0", b"5").unwrap();
    ok(&["sync", "-p", &mnt]);
    loop {
        match std::fs::write(&c, [1u8; 4096]) {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
                assert!(std::time::Instant::now() < deadline, "still EDQUOT");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    ok(&["quota-wipe", "-p", &mnt]);

    // The status tree counts what happened (rewritten once a second).
    let counter = |out: &str, name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    loop {
        let out = ok(&["counters", &mnt]);
        if counter(&out, "quota_edquot") >= 1
            && counter(&out, "xattr_totl_reads") >= 2
            && counter(&out, "xattr_indx_reads") >= 3
            && counter(&out, "quota_checks") >= 2
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    v.unmount();
}

/// `scoutfs search-xattrs` through a real mount: the inodes carrying a
/// `.srch.` xattr, sorted, one a line; a value change adds nothing, a
/// removal takes the inode out; argp errors and EINVAL as the original.
#[test]
fn search_xattrs_prints_the_inodes_of_a_srch_tag() {
    if skip("search_xattrs_prints_the_inodes_of_a_srch_tag") {
        return;
    }
    let mut v = Mounted::new();
    let mnt = v.mnt.to_str().unwrap().to_string();
    let (a, b, c) = (v.path("a"), v.path("b"), v.path("c"));
    for p in [&a, &b, &c] {
        std::fs::write(p, b"").unwrap();
    }
    let (ia, ic) = (ino(&a), ino(&c));
    let name = "scoutfs.srch.archived";
    setxattr(&c, name, b"1").unwrap();
    setxattr(&a, name, b"1").unwrap();
    setxattr(&b, "scoutfs.srch.other", b"1").unwrap();
    setxattr(&a, name, b"2").unwrap();
    assert_eq!(
        ok(&["search-xattrs", name, "-p", &mnt]),
        format!("{ia}\n{ic}\n")
    );
    removexattr(&c, name);
    assert_eq!(ok(&["search-xattrs", "-p", &mnt, name]), format!("{ia}\n"));
    assert_eq!(ok(&["search-xattrs", "scoutfs.srch.none", "-p", &mnt]), "");

    let o = scoutfs(&["search-xattrs", "-p", &mnt]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        stderr(&o),
        "search-xattrs: must provide xattr containing .srch. scoutfs tag\n\
         Try `search-xattrs --help' or `search-xattrs --usage' for more information.\n"
    );
    let o = scoutfs(&["search-xattrs", name, name, "-p", &mnt]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).starts_with("search-xattrs: more than one name argument given\n"));
    let o = scoutfs(&["search-xattrs", "user.plain", "-p", &mnt]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "search_xattrs ioctl failed: Invalid argument (22)\n\
         scoutfs: search-xattrs failed: Invalid argument (22)\n"
    );
    // The unmount's farewell rotates the log into srch_root (and checks the
    // volume clean); print decodes it: c's pair and a's entry.
    v.unmount();
    let printed = ok(&["print", v.meta.to_str().unwrap()]);
    let hash = engine::format::hash::fnv1a64(name.as_bytes());
    let entries = |ino: u64| {
        printed
            .lines()
            .filter(|l| l.contains("]: (") && l.contains(&format!("{hash:016x}.{ino}.")))
            .count()
    };
    assert_eq!((entries(ia), entries(ic)), (1, 2), "{printed}");
}
