//! Weak reads of the stable roots (reference §2.5, §8.3, §8.4, §12 "Deltas
//! on read"): what `.totl.` totals, `.indx.` index walks, quota rules and
//! `.srch.` searches ([`crate::srch::search`]) are read through, with no
//! cluster lock.
//!
//! A read takes its roots from the on-disk super (the last committed
//! server state, so only committed items are seen), plus the log-merge
//! STATUS item, and visits `fs_root` and every log tree of `logs_root`:
//! * ordinary items: per key the highest seq wins, tombstones hide;
//! * `.totl.` delta items (zone 12) are resolved as §2.5/§12 say: the
//!   contributions are split into **fs** (the `fs_root` item), **inp**
//!   (finalized trees that are inputs of the running merge — every
//!   finalized tree when no STATUS item exists — with the seq of the *last*
//!   input contribution in `logs_root` order) and **log** (every other
//!   tree); value = fs + inp when (fs present and inp.seq > fs.seq) or (fs
//!   absent and inp.count > 0), + log. A merge that folded the inputs into
//!   `fs_root` gave the fs item a seq at least that of what it folded, so a
//!   partially merged key is never counted twice (traps 15: 38d36c9f,
//!   5e2009f9).
//!
//! Guarantees: one result comes from one set of roots; a stale block
//! (rewritten since that super) throws away everything gathered and the
//! read starts again from a fresh super; the same super going stale twice
//! is corruption (EIO). Batches are bounded: each tree is read at most
//! `max` items past the cursor and only keys every tree covered are
//! returned.
//!
//! Touches `block` (the mount's cache, read-only), `btree`, `merge` (the
//! STATUS item and `is_input`) and the super block on the metadata device.

use std::collections::BTreeMap;
use std::sync::Arc;

use zerocopy::FromBytes;

use crate::block::BlockCache;
use crate::btree::Btree;
use crate::forest::Attempt;
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::btree_block::NodeItem;
use crate::format::items::TotlValue;
use crate::format::key::zone;
use crate::format::superblock::BtreeRoot;
use crate::format::Key;
use crate::item::api::ItemFuture;
use crate::merge::{all_log_trees, is_input, server::merge_status};

/// One resolved `.totl.` total: the name's three numbers, the total and
/// the number of contributing xattrs (both wrap like signed numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub name: [u64; 3],
    pub total: u64,
    pub count: u64,
}

/// What filesystem code reads from the stable roots.
pub trait StableItems: Send + Sync {
    /// Up to `max` non-zero totals with names at or after `from`, in name
    /// order.
    fn totals(&self, from: [u64; 3], max: usize) -> ItemFuture<'_, Vec<Total>>;

    /// Up to `max` live items with `first <= key <= last` (no tombstones,
    /// no deltas), in key order.
    fn items(&self, first: Key, last: Key, max: usize) -> ItemFuture<'_, Vec<(Key, Vec<u8>)>>;

    /// Inodes whose `.srch.` entries of `hash` are live in the srch files
    /// of the stable roots, `first_ino..=last_ino`, tracking at most
    /// `limit` entries (§8.3; see [`crate::srch::search`]).
    fn search_xattrs(
        &self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        limit: usize,
    ) -> ItemFuture<'_, crate::srch::search::Found>;
}

/// Where a version of a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Fs,
    Input,
    Log,
}

/// The weak reader of one mount, over its block cache.
pub struct WeakReader {
    btree: Btree,
}

impl std::fmt::Debug for WeakReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakReader").finish()
    }
}

/// Every version of the keys of one batch, and the last key every tree
/// covered.
struct Gathered {
    versions: BTreeMap<Key, Vec<(Source, NodeItem)>>,
    covered_to: Key,
    complete: bool,
}

impl WeakReader {
    pub fn new(cache: Arc<BlockCache>) -> WeakReader {
        WeakReader {
            btree: Btree::new(cache),
        }
    }

    /// Reads `[first, last]` from one super, restarting on ESTALE.
    async fn gather(&self, first: Key, last: Key, max: usize) -> Result<Gathered, i32> {
        let mut prev_seq = None;
        loop {
            let sb = crate::trans::read_super(self.btree.cache().device()).await?;
            match self.gather_once(&sb, first, last, max).await {
                Ok(g) => return Ok(g),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Stale) => {
                    let seq = sb.hdr.seq.get();
                    if prev_seq == Some(seq) {
                        return Err(libc::EIO);
                    }
                    prev_seq = Some(seq);
                }
            }
        }
    }

    async fn gather_once(
        &self,
        sb: &crate::format::superblock::SuperBlock,
        first: Key,
        last: Key,
        max: usize,
    ) -> Result<Gathered, Attempt> {
        let input_seq = merge_status(&self.btree, sb)
            .await?
            .map(|s| s.seq.get())
            .unwrap_or(u64::MAX);
        let mut trees: Vec<(Source, BtreeRoot)> = vec![(Source::Fs, sb.fs_root)];
        for (_, lt) in all_log_trees(&self.btree, &sb.logs_root).await? {
            if lt.item_root.is_empty() {
                continue;
            }
            let src = if is_input(&lt, input_seq) {
                Source::Input
            } else {
                Source::Log
            };
            trees.push((src, lt.item_root));
        }
        let mut g = Gathered {
            versions: BTreeMap::new(),
            covered_to: last,
            complete: true,
        };
        for (src, root) in &trees {
            if root.is_empty() {
                continue;
            }
            let rb = self.btree.range(root, &first, &last, max).await?;
            if let Some(next) = rb.next {
                // This tree stopped before `last`: only keys before its
                // next one are known from every tree.
                g.complete = false;
                if next <= g.covered_to {
                    g.covered_to = next.dec();
                }
            }
            for it in rb.items {
                g.versions.entry(it.key).or_default().push((*src, it));
            }
        }
        let to = g.covered_to;
        g.versions.retain(|k, _| *k <= to);
        Ok(g)
    }

    async fn read_totals(&self, from: [u64; 3], max: usize) -> Result<Vec<Total>, i32> {
        let last = Key::new(zone::XATTR_TOTL, u64::MAX, 0, u64::MAX, u64::MAX, 0);
        let mut first = Key::new(zone::XATTR_TOTL, from[0], 0, from[1], from[2], 0);
        let mut out = Vec::new();
        let max = max.max(1);
        loop {
            let g = self.gather(first, last, max).await?;
            for (k, vs) in &g.versions {
                if k.ty != 0 || k.fourth != 0 {
                    continue;
                }
                let (total, count) = resolve_totl(vs)?;
                if total == 0 && count == 0 {
                    continue;
                }
                out.push(Total {
                    name: [k.first, k.second, k.third],
                    total,
                    count,
                });
                if out.len() == max {
                    return Ok(out);
                }
            }
            if g.complete || g.covered_to >= last {
                return Ok(out);
            }
            first = g.covered_to.inc();
        }
    }

    async fn read_items(
        &self,
        first: Key,
        last: Key,
        max: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, i32> {
        let mut out = Vec::new();
        let max = max.max(1);
        let mut from = first;
        loop {
            let g = self.gather(from, last, max).await?;
            for (k, vs) in g.versions {
                // Highest seq wins; on a tie the first seen (fs_root, then
                // log trees in logs_root order).
                let mut win = &vs[0].1;
                for (_, v) in &vs[1..] {
                    if v.seq > win.seq {
                        win = v;
                    }
                }
                if win.flags & ITEM_FLAG_DELETION == 0 {
                    out.push((k, win.val.clone()));
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
            if g.complete || g.covered_to >= last {
                return Ok(out);
            }
            from = g.covered_to.inc();
        }
    }
}

fn totl_of(it: &NodeItem) -> Result<(u64, u64), i32> {
    let v = TotlValue::read_from_bytes(&it.val).map_err(|_| libc::EIO)?;
    Ok((v.total.get(), v.count.get()))
}

/// §2.5 resolution of one key's versions (in fs, then logs_root order).
fn resolve_totl(vs: &[(Source, NodeItem)]) -> Result<(u64, u64), i32> {
    let mut fs: Option<(u64, u64, u64)> = None;
    let mut inp = (0u64, 0u64);
    let mut inp_seq = 0u64;
    let mut log = (0u64, 0u64);
    for (src, it) in vs {
        if it.flags & ITEM_FLAG_DELETION != 0 {
            continue;
        }
        let (t, c) = totl_of(it)?;
        match src {
            Source::Fs => fs = Some((it.seq, t, c)),
            Source::Input => {
                inp = (inp.0.wrapping_add(t), inp.1.wrapping_add(c));
                inp_seq = it.seq;
            }
            Source::Log => log = (log.0.wrapping_add(t), log.1.wrapping_add(c)),
        }
    }
    let (mut total, mut count) = (0u64, 0u64);
    let add_inp = match fs {
        Some((seq, t, c)) => {
            total = t;
            count = c;
            inp_seq > seq
        }
        None => (inp.1 as i64) > 0,
    };
    if add_inp {
        total = total.wrapping_add(inp.0);
        count = count.wrapping_add(inp.1);
    }
    Ok((total.wrapping_add(log.0), count.wrapping_add(log.1)))
}

impl StableItems for WeakReader {
    fn totals(&self, from: [u64; 3], max: usize) -> ItemFuture<'_, Vec<Total>> {
        Box::pin(self.read_totals(from, max))
    }

    fn items(&self, first: Key, last: Key, max: usize) -> ItemFuture<'_, Vec<(Key, Vec<u8>)>> {
        Box::pin(self.read_items(first, last, max))
    }

    fn search_xattrs(
        &self,
        hash: u64,
        first_ino: u64,
        last_ino: u64,
        limit: usize,
    ) -> ItemFuture<'_, crate::srch::search::Found> {
        Box::pin(async move {
            let mut prev_seq = None;
            loop {
                let sb = crate::trans::read_super(self.btree.cache().device()).await?;
                let res =
                    crate::srch::search::search(&self.btree, &sb, hash, first_ino, last_ino, limit)
                        .await;
                match res.map_err(Attempt::from) {
                    Ok(found) => return Ok(found),
                    Err(Attempt::Fail(e)) => return Err(e),
                    Err(Attempt::Stale) => {
                        // Files compacted and freed since this super: a
                        // newer super names their replacement.
                        let seq = sb.hdr.seq.get();
                        if prev_seq == Some(seq) {
                            return Err(libc::EIO);
                        }
                        prev_seq = Some(seq);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn item(seq: u64, t: u64, c: u64) -> NodeItem {
        let v = TotlValue {
            total: t.into(),
            count: c.into(),
        };
        let mut it = NodeItem::new(Key::default(), v.as_bytes().to_vec());
        it.seq = seq;
        it
    }

    #[test]
    fn inputs_already_folded_into_fs_count_once() {
        // fs folded the inputs (its seq is theirs): inputs are not added.
        let vs = vec![
            (Source::Fs, item(10, 30, 3)),
            (Source::Input, item(7, 10, 1)),
            (Source::Input, item(10, 20, 2)),
            (Source::Log, item(12, 5, 1)),
        ];
        assert_eq!(resolve_totl(&vs).unwrap(), (35, 4));
        // Not merged yet: fs older than the last input.
        let vs = vec![
            (Source::Fs, item(5, 30, 3)),
            (Source::Input, item(7, 10, 1)),
            (Source::Log, item(12, 5, 1)),
        ];
        assert_eq!(resolve_totl(&vs).unwrap(), (45, 5));
    }

    #[test]
    fn absent_fs_takes_inputs_only_with_a_positive_count() {
        let vs = vec![(Source::Input, item(7, 10, 1))];
        assert_eq!(resolve_totl(&vs).unwrap(), (10, 1));
        // Inputs that took a key to zero, already merged and deleted.
        let vs = vec![(Source::Input, item(7, 10u64.wrapping_neg(), u64::MAX))];
        assert_eq!(resolve_totl(&vs).unwrap(), (0, 0));
    }
}
