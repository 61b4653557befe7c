//! mkfs end to end: what it writes passes check and prints; what it must
//! refuse (small devices without -A, existing filesystems without -f) it
//! refuses before writing anything.

use std::path::Path;
use std::process::Command;

use engine::check::check_volume;
use scoutfs_cli::dev::open_read_only;
use scoutfs_cli::print::print_to_string;

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

fn scoutfs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_scoutfs"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn check_and_print(meta: &Path, data: &Path) {
    let m = open_read_only(meta).unwrap();
    let d = open_read_only(data).unwrap();
    let report = check_volume(&m, Some(&d), &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:#?}", report.messages());
    let (out, r) = print_to_string(&m, false);
    assert_eq!(r, Ok(()));
    assert!(out.starts_with("super blkno 16\n"));
    assert!(out.contains("fs_root btree blkno 2\n"));
    let (_, r) = print_to_string(&m, true);
    assert_eq!(r, Ok(()));
}

#[test]
fn full_size_devices_pass_check_and_print() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sparse(&meta, 64 << 30);
    sparse(&data, 64 << 30);
    let o = scoutfs(&[
        "mkfs",
        s(&meta),
        s(&data),
        "-Q",
        "0,10.0.0.1,7000",
        "--quorum-slot=4,10.0.0.2,7000",
        "-z",
        "1048576",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("  64KB metadata blocks:   1048576 (64.00 GB)\n"),
        "{out}"
    );
    assert!(out.contains("  quorum slots:           0: 10.0.0.1:7000\n                          4: 10.0.0.2:7000\n"), "{out}");
    check_and_print(&meta, &data);
    let c = scoutfs(&["check", s(&meta), s(&data)]);
    assert_eq!(c.status.code(), Some(0));
}

#[test]
fn small_devices_with_allow_small_pass_check_and_print_v1_too() {
    let dir = tempfile::tempdir().unwrap();
    for v in ["1", "2"] {
        let (meta, data) = (
            dir.path().join(format!("m{v}")),
            dir.path().join(format!("d{v}")),
        );
        sparse(&meta, 512 << 20);
        sparse(&data, 1 << 30);
        let o = scoutfs(&[
            "mkfs",
            "-A",
            "-V",
            v,
            s(&meta),
            s(&data),
            "-Q",
            "0,127.0.0.1,19700",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(
            err,
            "512.00MB too small for min 64.00GB meta device, allowing with -A\n\
             1.00GB too small for min 64.00GB data device, allowing with -A\n"
        );
        check_and_print(&meta, &data);
    }
}

fn all_zero(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    b.iter().all(|&x| x == 0)
}

#[test]
fn refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sparse(&meta, 8 << 20);
    sparse(&data, 8 << 20);
    let o = scoutfs(&["mkfs", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("8.00MB too small for min 64.00GB meta device\n"),
        "{err}"
    );
    assert!(
        err.ends_with("scoutfs: mkfs failed: Invalid argument (22)\n"),
        "{err}"
    );
    assert!(all_zero(&meta) && all_zero(&data));

    // A filesystem there already: refused without -f, replaced with it.
    sparse(&meta, 512 << 20);
    sparse(&data, 1 << 30);
    assert!(
        scoutfs(&["mkfs", "-A", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"])
            .status
            .success()
    );
    let before = std::fs::read(&meta).unwrap();
    let o = scoutfs(&["mkfs", "-A", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&meta).unwrap(), before);
    let o = scoutfs(&[
        "mkfs",
        "-A",
        "-f",
        s(&meta),
        s(&data),
        "-Q",
        "0,127.0.0.1,19700",
    ]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(&meta).unwrap(), before);
}

#[test]
fn usage_errors_are_argp_style() {
    let o = scoutfs(&["mkfs", "a", "b"]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        String::from_utf8(o.stderr).unwrap(),
        "mkfs: must specify at least one quorum slot with --quorum-slot|-Q\n\
         Try `mkfs --help' or `mkfs --usage' for more information.\n"
    );
    let o = scoutfs(&["mkfs", "a", "b", "-Q", "0,1.2.3.4,5", "-Q", "0,1.2.3.4,6"]);
    assert_eq!(o.status.code(), Some(64));
    let o = scoutfs(&["mkfs", "a", "b", "-Q", "0,1.2.3.4,5", "-V", "3"]);
    assert_eq!(o.status.code(), Some(64));
    let o = scoutfs(&["print"]);
    assert_eq!(o.status.code(), Some(64));
    let o = scoutfs(&["check", "/nonexistent/meta"]);
    assert_eq!(o.status.code(), Some(2));
}

/// mkfs holds its devices exclusively for the whole run: a second opener
/// (another mkfs, or anything else asking for exclusivity) is refused with
/// EBUSY before anything is written, so two mkfs runs can't interleave.
#[test]
fn mkfs_refuses_a_device_held_exclusively() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sparse(&meta, 512 << 20);
    sparse(&data, 1 << 30);
    let held = scoutfs_cli::dev::open_exclusive(&data).unwrap();
    let o = scoutfs(&["mkfs", "-A", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "failed to open '{}': Device or resource busy (16)",
            s(&data)
        )),
        "{err}"
    );
    assert!(all_zero(&meta) && all_zero(&data));
    drop(held);
    let o = scoutfs(&["mkfs", "-A", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // print and check only read: they run while someone holds the device.
    let _held = scoutfs_cli::dev::open_exclusive(&meta).unwrap();
    assert_eq!(scoutfs(&["print", s(&meta)]).status.code(), Some(0));
    assert_eq!(
        scoutfs(&["check", s(&meta), s(&data)]).status.code(),
        Some(0)
    );
}

/// The check command's exit codes and output: 1 with one line per fault
/// and a count when a block is damaged, 2 when there is no filesystem.
#[test]
fn check_reports_damage_with_exit_1_and_no_fs_with_exit_2() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sparse(&meta, 512 << 20);
    sparse(&data, 1 << 30);
    assert!(
        scoutfs(&["mkfs", "-A", s(&meta), s(&data), "-Q", "0,127.0.0.1,19700"])
            .status
            .success()
    );
    // Damage the fs_root leaf (blkno 2) past its header.
    let f = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
    f.write_all_at(&[0xff; 8], 2 * 65536 + 1000).unwrap();
    drop(f);
    let o = scoutfs(&["check", s(&meta), s(&data)]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("super.fs_root -> blkno 2: "),
        "no fault names the block: {out}"
    );
    assert!(out.ends_with(" faults found\n"), "{out}");
    assert!(o.stderr.is_empty(), "no progress bar without a terminal");
    sparse(&meta, 512 << 20);
    let o = scoutfs(&["check", s(&meta)]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(o.stderr).unwrap(),
        "check: meta device holds no scoutfs super\n"
    );
}
