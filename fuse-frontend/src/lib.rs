//! The FUSE frontend of the scoutfs engine and its mount daemon.
//!
//! * [`filesystem`]: fuse-backend-rs's `FileSystem` over `engine::fs::Fs`,
//!   with the kernel-cache policy of ARCHITECTURE §2.6.
//! * [`bridge`]: how a FUSE worker thread runs an operation on the engine
//!   executor and waits for it.
//! * [`attr`]: attribute conversions.
//! * [`acl`]: POSIX ACL semantics the kernel leaves to the filesystem.
//! * [`session`]: mount(2) on /dev/fuse, worker threads, unmount.
//! * [`dispatch`]: the requests fuse-backend-rs's `Server` cannot serve
//!   (INIT's newer flags, TMPFILE, INTERRUPT, SETXATTR_EXT), ours.
//! * [`signals`]: SIGTERM and friends, taken by a watcher thread.
//! * [`daemon`]: [`serve`], the whole life of one single-node mount, which
//!   the `scoutfsd` binary and the `mount.scoutfs` helper call.
//! * [`control`]: the control socket `@scoutfs/<ident>` the `scoutfs`
//!   utility talks to, its wire format and client, and the status tree
//!   under /run/scoutfs (docs/control-socket.md).
//! * [`fence_tree`]: the tree's `fence/` and `quorum/` files, kept from
//!   the node's start by a thread of their own.
//! * [`launch`]: forking a daemon and waiting until it has mounted.
//! * [`options`]: scoutfs mount options.
//! * [`helpers`]: `mount.scoutfs` and `umount.fuse.scoutfs`.
//! * [`remount`]: `mount -o remount` (`mount.fuse.scoutfs`).
//!
//! docs/fuse.md describes what works through a real mount and the
//! pjdfstest results.

pub mod acl;
pub mod attr;
pub mod bridge;
pub mod control;
pub mod daemon;
pub mod dispatch;
pub mod fence_tree;
pub mod filesystem;
pub mod helpers;
pub mod launch;
pub mod notify;
pub mod options;
pub mod remount;
pub mod session;
pub mod signals;

pub use daemon::{serve, strerror, Config, ServeError};
pub use filesystem::{FuseOptions, ScoutFuse};
