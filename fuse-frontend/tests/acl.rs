//! POSIX ACLs through a real mount, with the Debian `acl` tools and a
//! non-root user (`nobody` through `setpriv`): the kernel enforces an
//! ACL entry the mode alone would refuse; the mode follows the ACL's mask,
//! chmod rewrites the mask, an ACL the mode expresses is stored as the mode
//! only; a directory's default ACL is inherited by new files (narrowed by
//! the create mode, umask ignored) and new directories (default copied),
//! while outside such a directory the umask applies. Setting an access
//! ACL clears S_ISGID when the caller is outside the file's group and
//! lacks CAP_FSETID (FUSE_SETXATTR_EXT's ACL_KILL_SGID), as on a local
//! filesystem. With `noacl` the ACL xattrs are refused and the umask
//! still applies.
//!
//! Needs root, /dev/fuse, `setfacl`/`getfacl` and `setpriv`; skipped
//! otherwise.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use support::{get_xattr, mount_entry, skip_without_fuse, Daemon, Volume, SCOUTFSD};

const NOBODY: u32 = 65534;

fn tools_missing(test: &str) -> bool {
    for t in ["setfacl", "getfacl", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("SKIPPED {test}: {t} is not installed (scripts/setup.sh)");
            return true;
        }
    }
    false
}

/// Runs `script` with sh as nobody (no supplementary groups).
fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv")
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect("run tool")
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn acls_enforced_and_inherited() {
    if skip_without_fuse("acls_enforced_and_inherited")
        || tools_missing("acls_enforced_and_inherited")
    {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let mnt = v.mnt.clone();
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();

    // An entry for nobody opens a file its mode keeps closed.
    let f = mnt.join("f");
    std::fs::write(&f, b"secret").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cat = format!("cat {}", s(&f));
    assert!(
        !as_nobody(&cat).status.success(),
        "mode 600 let nobody read"
    );
    ok(run("setfacl", &["-m", "u:nobody:r", s(&f)]), "setfacl -m");
    assert_eq!(ok(as_nobody(&cat), "read through the ACL"), "secret");
    // The mode's group bits are the mask.
    assert_eq!(mode_of(&f), 0o640);
    let acl = ok(run("getfacl", &["-cp", s(&f)]), "getfacl");
    assert!(acl.contains("user:nobody:r--"), "{acl}");
    assert!(acl.contains("mask::r--"), "{acl}");

    // chmod rewrites the mask: the entry no longer grants anything.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let acl = ok(run("getfacl", &["-cp", s(&f)]), "getfacl after chmod");
    assert!(acl.contains("mask::---"), "{acl}");
    assert!(
        !as_nobody(&cat).status.success(),
        "chmod 600 left nobody in"
    );

    // An ACL the mode expresses is the mode, not an xattr.
    ok(run("setfacl", &["-b", s(&f)]), "setfacl -b");
    ok(
        run("setfacl", &["-m", "u::rwx,g::r-x,o::r--", s(&f)]),
        "setfacl base",
    );
    assert_eq!(mode_of(&f), 0o754);
    let e = get_xattr(&f, "system.posix_acl_access").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "stored anyway");

    // A default ACL: new files get it masked by their mode; no umask.
    let dir = mnt.join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(
        run("setfacl", &["-m", "u:nobody:rwx", s(&dir)]),
        "access on dir",
    );
    ok(
        run("setfacl", &["-d", "-m", "u:nobody:rwx", s(&dir)]),
        "default on dir",
    );
    let new = dir.join("new");
    let sub = dir.join("sub");
    ok(
        as_nobody(&format!(
            "umask 077 && touch {} && mkdir {}",
            s(&new),
            s(&sub)
        )),
        "create under a default ACL",
    );
    assert_eq!(mode_of(&new), 0o664, "umask applied under a default ACL");
    let acl = ok(run("getfacl", &["-cp", s(&new)]), "getfacl new");
    assert!(acl.contains("user:nobody:rwx\t#effective:rw-"), "{acl}");
    assert_eq!(mode_of(&sub), 0o775);
    let dacl = ok(run("getfacl", &["-cpd", s(&sub)]), "getfacl -d sub");
    assert!(
        dacl.contains("user:nobody:rwx"),
        "default not inherited: {dacl}"
    );

    // Elsewhere the umask applies (the kernel leaves it to us).
    let open = mnt.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let plain = open.join("plain");
    ok(
        as_nobody(&format!("umask 077 && touch {}", s(&plain))),
        "create without a default ACL",
    );
    assert_eq!(mode_of(&plain), 0o600);

    d.unmount();
    v.assert_clean("after the ACL test");
}

#[test]
fn setfacl_clears_sgid_outside_the_group() {
    if skip_without_fuse("setfacl_clears_sgid_outside_the_group")
        || tools_missing("setfacl_clears_sgid_outside_the_group")
    {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    std::fs::set_permissions(&v.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sgid_file = |name: &str, gid: u32| {
        let f = v.mnt.join(name);
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::chown(&f, Some(NOBODY), Some(gid)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o2770)).unwrap();
        assert_eq!(mode_of(&f), 0o2770);
        f
    };
    // nobody owns it, but the group is root's: S_ISGID goes.
    let other = sgid_file("other-group", 0);
    let cmd = format!("setfacl -m u::rwx,g::r-x,o::- {}", s(&other));
    ok(as_nobody(&cmd), "setfacl as owner outside the group");
    assert_eq!(mode_of(&other), 0o750, "S_ISGID kept outside the group");
    // In the file's group: S_ISGID stays (also with a named entry).
    let own = sgid_file("own-group", NOBODY);
    let cmd = format!("setfacl -m u:root:r {}", s(&own));
    ok(as_nobody(&cmd), "setfacl as owner in the group");
    assert_eq!(mode_of(&own), 0o2770, "S_ISGID cleared inside the group");
    // root (CAP_FSETID) outside the group: stays.
    let rooted = sgid_file("by-root", 4242);
    ok(
        run("setfacl", &["-m", "u::rwx,g::r-x,o::-", s(&rooted)]),
        "setfacl as root",
    );
    assert_eq!(mode_of(&rooted), 0o2750, "root lost S_ISGID");
    d.unmount();
    v.assert_clean("after the SGID rule");
}

#[test]
fn noacl_refuses_acls() {
    if skip_without_fuse("noacl_refuses_acls") || tools_missing("noacl_refuses_acls") {
        return;
    }
    let v = Volume::new();
    // mount.scoutfs is scoutfsd under that name (no /sbin install needed).
    let opts = format!("metadev_path={},noacl", s(&v.meta));
    let out = Command::new(SCOUTFSD)
        .arg0("mount.scoutfs")
        .args([s(&v.data), s(&v.mnt), "-o", &opts])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(mount_entry(&v.mnt).is_some());
    let f = v.mnt.join("f");
    std::fs::write(&f, b"x").unwrap();
    let o = run("setfacl", &["-m", "u:nobody:r", s(&f)]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not supported"),
        "{o:?}"
    );
    std::fs::set_permissions(&v.mnt, std::fs::Permissions::from_mode(0o777)).unwrap();
    let plain = v.mnt.join("plain");
    ok(
        as_nobody(&format!("umask 027 && touch {}", s(&plain))),
        "create with noacl",
    );
    assert_eq!(mode_of(&plain), 0o640);
    let out = Command::new(SCOUTFSD)
        .arg0("umount.fuse.scoutfs")
        .arg(&v.mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    v.assert_clean("after noacl");
}
