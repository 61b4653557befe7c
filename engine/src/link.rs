//! The seam between a mount and its server.
//!
//! A mount sends requests (format::net::Cmd with an encoded payload) and
//! awaits the reply payload or an errno. Payloads are the wire structures of
//! format::net / format::log_trees, little-endian, exactly as they travel on
//! TCP: the in-process link used by the single-process engine and the TCP
//! link of the cluster carry the same bytes, so handlers are written once.
//!
//! | cmd | request payload | reply payload |
//! |---|---|---|
//! | Greeting | `NetGreeting` | `NetGreeting` |
//! | AllocInodes | le64 count | `NetInodeAlloc` |
//! | GetLogTrees | – | `LogTrees` |
//! | CommitLogTrees | `LogTrees` | – |
//! | GetRoots | – | `NetRoots` |
//! | GetLastSeq | – | le64 |
//! | Statfs | – | `NetStatfs` |
//! | GetLogMerge | – | `LogMergeRequest` (ENOENT: no work) |
//! | CommitLogMerge | `LogMergeComplete` | – |
//! | Farewell | – | – |

use std::future::Future;
use std::pin::Pin;

use crate::format::net::Cmd;

/// The reply to a call: payload bytes, or an errno.
pub type CallResult = Result<Vec<u8>, i32>;

pub type CallFuture = Pin<Box<dyn Future<Output = CallResult> + Send + 'static>>;

/// A mount's connection to the server. Calls may be issued concurrently;
/// each gets exactly one reply. A server that is replaced mid-call sees the
/// request again (handlers are replay-safe, reference §3.2).
pub trait ServerLink: Send + Sync + 'static {
    fn call(&self, cmd: Cmd, payload: Vec<u8>) -> CallFuture;
}
