//! Btree operations the log merge needs (reference §1.6, §2.4): finding and
//! replacing the `fs_root` parent block that covers a key, editing leaves of
//! a subtree whose root must not split or join, rebalancing a path after a
//! splice, and freeing a whole tree without reading its leaves.
//!
//! A *subtree* is a level-1 block of a tree of height > 2, handed to a mount
//! as a `BtreeRoot` of height 2. The mount COWs it with its own allocator;
//! the server later points the parent item at the new block
//! ([`Btree::set_parent`]). Because the parent item (and its key) lives in a
//! block the mount never sees, the subtree root may not split, join or
//! collapse: [`Btree::merge_edit_leaf`] returns `Ok(None)` (the original's
//! ERANGE) where the ordinary descent would do one, and the server
//! rebalances that path ([`Btree::rebalance`]) once every completion of the
//! batch is spliced in.
//!
//! Guarantees:
//! * `merge_edit_leaf` with `subtree == false` behaves exactly like the
//!   ordinary descent (it may grow or shrink the root).
//! * With `subtree == true` the root keeps its blkno-independent identity:
//!   same level, never empty, never split, never collapsed; a `None` result
//!   leaves every COWed block stored, so the root stays a valid tree.
//! * `set_parent` replaces one child ref (or the whole root) without freeing
//!   the old child: the mount's COW already recorded that free.
//! * `free_blocks` frees every block of a tree exactly once across calls,
//!   reading only parent blocks; progress lives in the caller's key.
//!
//! Touches only the private node machinery of `btree` (this is a child
//! module so that `btree/mod.rs` stays unchanged apart from one line).

use super::{
    check_root, checked_view, child_ref, needs_split, parent_item, view_ref, Btree, MetaAllocator,
    PARENT_ITEM_BYTES,
};
use crate::block::{Error, Result};
use crate::format::btree::JOIN_LOW_WATER_BYTES;
use crate::format::btree_block::NodeItem;
use crate::format::superblock::BtreeRoot;
use crate::format::{BlockRef, Key, BTREE_MAX_HEIGHT};
use zerocopy::IntoBytes;

/// The parent block a merge request works on and the keys it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentRange {
    /// The subtree: a level-1 block as a root of height 2, or the whole
    /// tree when its height is at most 2.
    pub root: BtreeRoot,
    /// `true` when `root` is a level-1 block inside a taller tree.
    pub subtree: bool,
    pub start: Key,
    pub end: Key,
}

/// Height above which merges work on level-1 subtrees (reference §2.4:
/// requests carry SUBTREE when `fs_root` is taller than 2).
pub const SUBTREE_MIN_HEIGHT: u8 = 3;

impl Btree {
    /// The level-1 block covering `key` and its key range, or the whole
    /// tree if it is not taller than 2.
    pub async fn get_parent(&self, root: &BtreeRoot, key: &Key) -> Result<ParentRange> {
        check_root(root)?;
        if root.height < SUBTREE_MIN_HEIGHT {
            return Ok(ParentRange {
                root: *root,
                subtree: false,
                start: Key::MIN,
                end: Key::MAX,
            });
        }
        let mut r = root.ref_;
        let mut level = root.height - 1;
        let mut lower: Option<Key> = None;
        let mut upper = Key::MAX;
        while level > 1 {
            let block = self.read_block(&r).await?;
            let view = checked_view(&block, level)?;
            let idx = view.lower_bound(key).min(view.len() - 1);
            upper = view.key(idx);
            if idx > 0 {
                lower = Some(view.key(idx - 1));
            }
            r = view_ref(&view, idx)?;
            level -= 1;
        }
        Ok(ParentRange {
            root: BtreeRoot {
                ref_: r,
                height: 2,
                pad: [0; 7],
            },
            subtree: true,
            start: lower.map_or(Key::MIN, |k| k.inc()),
            end: upper,
        })
    }

    /// Points the parent item of the level-1 block covering `key` at
    /// `sub` (a height-2 root), COWing the path above it; when `root` is not
    /// taller than 2, `sub` replaces the whole root. The replaced child is
    /// not freed (the mount that COWed it recorded that).
    pub async fn set_parent(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        sub: &BtreeRoot,
    ) -> Result<()> {
        check_root(root)?;
        check_root(sub)?;
        if root.height < SUBTREE_MIN_HEIGHT {
            *root = *sub;
            return Ok(());
        }
        if sub.height != 2 {
            return Err(Error::Invalid(format!(
                "splicing a subtree of height {} into a tree of height {}",
                sub.height, root.height
            )));
        }
        let mut cur = self.cow(&root.ref_, root.height - 1, alloc).await?;
        root.ref_ = cur.block_ref();
        loop {
            let idx = cur
                .items
                .partition_point(|it| it.key < *key)
                .min(cur.items.len() - 1);
            if cur.level == 2 {
                cur.items[idx].val = sub.ref_.as_bytes().to_vec();
                self.store(&cur)?;
                return Ok(());
            }
            let r = child_ref(&cur.items[idx])?;
            let child = self.cow(&r, cur.level - 1, alloc).await?;
            cur.items[idx].val = child.block_ref().as_bytes().to_vec();
            self.store(&cur)?;
            cur = child;
        }
    }

    /// COWs the path to `key`, splitting and joining on the way as an
    /// ordinary descent does: after a splice, this brings a subtree root
    /// that stopped short of a split or join back within the tree's rules.
    pub async fn rebalance(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
    ) -> Result<()> {
        if root.is_empty() {
            return Ok(());
        }
        self.edit_leaf(root, alloc, key, 0, |_, _| Ok(())).await
    }

    /// The descent of an ordinary edit for `key` (so that `need` more item
    /// bytes fit in the leaf), then `f` on the leaf's items and upper bound.
    /// With `subtree`, returns `Ok(None)` instead of splitting, joining,
    /// collapsing or emptying the root (every COWed block is stored first).
    pub async fn merge_edit_leaf<R, F>(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        need: usize,
        subtree: bool,
        f: F,
    ) -> Result<Option<R>>
    where
        F: FnOnce(&mut Vec<NodeItem>, Key) -> Result<R> + Send,
    {
        if !subtree {
            return self.edit_leaf(root, alloc, key, need, f).await.map(Some);
        }
        check_root(root)?;
        if root.height != 2 {
            return Err(Error::Invalid(format!(
                "subtree merge into a root of height {}",
                root.height
            )));
        }
        let mut cur = self.cow(&root.ref_, 1, alloc).await?;
        root.ref_ = cur.block_ref();
        if needs_split(&cur, need) {
            self.store(&cur)?;
            return Ok(None);
        }
        let mut idx = cur.items.partition_point(|it| it.key < *key);
        if idx == cur.items.len() {
            self.store(&cur)?;
            return Err(Error::Invalid(format!(
                "key {key} beyond subtree block {}",
                cur.blkno
            )));
        }
        let r = child_ref(&cur.items[idx])?;
        let mut child = self.cow(&r, 0, alloc).await?;
        cur.items[idx].val = child.block_ref().as_bytes().to_vec();
        if child.total() < JOIN_LOW_WATER_BYTES && cur.items.len() > 1 {
            // A join may remove one of the root's items; the root must not
            // fall to where it would need a join itself.
            if cur.total() - PARENT_ITEM_BYTES < JOIN_LOW_WATER_BYTES {
                self.store(&child)?;
                self.store(&cur)?;
                return Ok(None);
            }
            let (c, i) = self.join(&mut cur, child, idx, key, alloc).await?;
            child = c;
            idx = i;
        }
        if needs_split(&child, need) {
            let at = super::split_point(&child.items);
            let lower: Vec<NodeItem> = child.items.drain(..at).collect();
            let left_key = lower.last().map(|it| it.key).unwrap_or(Key::MIN);
            let left = self.new_node(0, lower, alloc).await?;
            cur.items
                .insert(idx, parent_item(left_key, left.block_ref()));
            if *key <= left_key {
                self.store(&child)?;
                child = left;
            } else {
                self.store(&left)?;
                idx += 1;
            }
        }
        let upper = cur.items[idx].key;
        let res = f(&mut child.items, upper);
        if child.items.is_empty() && cur.items.len() > 1 {
            self.free_node(&child, alloc).await?;
            super::remove_child(&mut cur, idx);
        } else {
            // The subtree's last leaf, emptied, has to stay (the root is
            // never empty); the server's rebalance after the splice joins
            // the root and so drops it.
            self.store(&child)?;
        }
        self.store(&cur)?;
        res.map(Some)
    }

    /// Frees the blocks of `root` whose keys are all below `*key` has not
    /// reached yet, in key order, at most about `budget` blocks per call
    /// (at least one level-1 child): leaves are freed from their parent's
    /// refs without being read. Advances `*key`; returns `true` once every
    /// block is freed (then `*key` is `Key::MAX`).
    pub async fn free_blocks(
        &self,
        root: &BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &mut Key,
        budget: usize,
    ) -> Result<bool> {
        check_root(root)?;
        if root.is_empty() {
            *key = Key::MAX;
            return Ok(true);
        }
        if root.height == 1 {
            alloc.free_meta(root.ref_.blkno.get()).await?;
            self.cache.forget(root.ref_.blkno.get());
            *key = Key::MAX;
            return Ok(true);
        }
        let mut freed = 0usize;
        loop {
            // Walk to the level-1 block covering `key`, remembering for each
            // ancestor whether we took its last child.
            let mut path: Vec<(BlockRef, bool)> = Vec::with_capacity(BTREE_MAX_HEIGHT as usize);
            let mut r = root.ref_;
            let mut level = root.height - 1;
            let mut last_child = true;
            while level > 1 {
                let block = self.read_block(&r).await?;
                let view = checked_view(&block, level)?;
                let idx = view.lower_bound(key);
                if idx == view.len() {
                    return Err(Error::corrupt(format!(
                        "freeing key {key} beyond parent block {}",
                        r.blkno.get()
                    )));
                }
                path.push((r, last_child));
                last_child = idx + 1 == view.len();
                r = view_ref(&view, idx)?;
                level -= 1;
            }
            let block = self.read_block(&r).await?;
            let view = checked_view(&block, 1)?;
            let mut idx = view.lower_bound(key);
            if idx == view.len() {
                return Err(Error::corrupt(format!(
                    "freeing key {key} beyond parent block {}",
                    r.blkno.get()
                )));
            }
            while idx < view.len() {
                let leaf = view_ref(&view, idx)?;
                alloc.free_meta(leaf.blkno.get()).await?;
                self.cache.forget(leaf.blkno.get());
                freed += 1;
                let k = view.key(idx);
                idx += 1;
                if idx < view.len() {
                    *key = k.inc();
                    if freed >= budget {
                        return Ok(false);
                    }
                }
            }
            // Every child is gone: free this block and each ancestor whose
            // last child it ends.
            let upper = view.key(view.len() - 1);
            drop(view);
            drop(block);
            alloc.free_meta(r.blkno.get()).await?;
            self.cache.forget(r.blkno.get());
            freed += 1;
            let mut up_last = last_child;
            while up_last {
                let Some((pr, pr_last)) = path.pop() else {
                    break;
                };
                alloc.free_meta(pr.blkno.get()).await?;
                self.cache.forget(pr.blkno.get());
                freed += 1;
                up_last = pr_last;
            }
            if up_last {
                // The root itself is gone: the whole tree is freed.
                *key = Key::MAX;
                return Ok(true);
            }
            if upper == Key::MAX {
                return Err(Error::corrupt(
                    "a block ending at the largest key is not on the rightmost path",
                ));
            }
            *key = upper.inc();
            if freed >= budget {
                return Ok(false);
            }
        }
    }
}
