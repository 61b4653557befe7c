//! Starting a daemon in the background and waiting until it has mounted
//! (ARCHITECTURE §2.11), for `scoutfsd` without `-f` and `mount.scoutfs`.
//!
//! [`spawn_daemon`] forks (the caller must have no other threads). The
//! child starts its own session and runs [`serve`]; the parent waits on a
//! pipe for one byte that the child writes once the filesystem is mounted
//! and served. Guarantees:
//! * the parent returns 0 only once the mount is up, otherwise the child's
//!   exit status after its message on the shared stderr;
//! * if the parent dies first (its read end closes), the child notices
//!   before mount(2) ([`Config::still_wanted`]) or when it reports
//!   ([`Config::on_ready`] fails with EPIPE) and exits with nothing
//!   mounted;
//! * after the report the child's standard streams point at /dev/null.
//!
//! Touches the process (fork, setsid, pipe, waitpid) only.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::daemon::{serve, Config};

/// Points the standard streams at /dev/null (the detached child).
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this
            // process owns; `null` stays open for the call.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Whether the read end of the pipe behind `wr` is still open.
fn reader_alive(wr: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: wr.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout only samples the state.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    !(n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0)
}

/// What happened in the parent.
#[derive(Debug, PartialEq, Eq)]
pub enum Launched {
    /// The daemon reported its mount; it runs on with this pid.
    Mounted(i32),
    /// The daemon exited before mounting, with this exit code.
    Failed(i32),
}

/// Forks a daemon for `config`; see the module comment. `prog` prefixes
/// the parent's own messages. `in_parent` runs in the parent right after
/// the fork (e.g. to die with its own parent).
pub fn spawn_daemon(mut config: Config, prog: &str, in_parent: impl FnOnce()) -> Launched {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("{prog}: pipe: {}", std::io::Error::last_os_error());
        return Launched::Failed(1);
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees one thread here, so the child may run
    // arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("{prog}: fork: {}", std::io::Error::last_os_error());
        return Launched::Failed(1);
    }
    if pid == 0 {
        drop(rd);
        // SAFETY: setsid has no memory effects; failure is harmless.
        unsafe { libc::setsid() };
        let wr = std::sync::Arc::new(wr);
        let probe = wr.clone();
        config.still_wanted = Some(Box::new(move || reader_alive(&probe)));
        config.on_ready = Some(Box::new(move || {
            let mut f = std::fs::File::from(wr.try_clone().expect("dup of the ready pipe"));
            let ok = f.write_all(b"1").is_ok();
            if ok {
                detach_stdio();
            }
            ok
        }));
        let code = match serve(config) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{prog}: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    drop(wr);
    in_parent();
    let mut rd = std::fs::File::from(rd);
    let mut byte = [0u8; 1];
    if matches!(rd.read(&mut byte), Ok(1)) {
        return Launched::Mounted(pid);
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        Launched::Failed(libc::WEXITSTATUS(status))
    } else {
        Launched::Failed(1)
    }
}
