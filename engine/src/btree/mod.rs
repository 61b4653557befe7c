//! The copy-on-write btree over the block cache, in the original's block
//! layout (reference §1.6).
//!
//! A tree is named by a `format::superblock::BtreeRoot` (ref + height). Leaves
//! hold items; parents hold one item per child whose value is the child's
//! `BlockRef` and whose key is the largest key that may appear in that child
//! (the rightmost spine uses `Key::MAX`). Descent picks the first parent item
//! whose key is >= the search key.
//!
//! Nodes are read with `format::btree_block::BlockView` (which accepts any
//! well-formed AVL tree, balanced or not, as the original writes) and edited
//! as sorted `Vec<NodeItem>`s that `encode_node` writes back when the node is
//! stored. There is no second block codec.
//!
//! Guarantees:
//! * Writers COW every block on the path they modify: a block not yet dirty in
//!   this transaction gets a new blkno from the [`MetaAllocator`], a fresh
//!   random seq, and its old blkno goes back to the allocator (which must not
//!   reuse it before commit). Blocks already dirty are rewritten in place (as
//!   new `Arc`s in the cache; readers keep the bytes they hold).
//! * Descent splits a full node before entering it (the lower half moves to a
//!   new LEFT sibling so the existing block keeps its parent key), joins or
//!   rebalances a non-root node whose `total_item_bytes` is below
//!   `JOIN_LOW_WATER_BYTES`, collapses a root parent that has one child, and
//!   frees a root leaf that becomes empty (the root becomes height 0).
//! * Values are at most `MAX_VAL_SIZE` bytes (`Error::TooBig`); height never
//!   exceeds `BTREE_MAX_HEIGHT`.
//! * On-disk input never panics: bad blocks are `Error::Io`, rewritten ones
//!   `Error::Stale` (from the cache).
//! * Failure atomicity: EEXIST/ENOENT from an operation leave the tree valid
//!   (the path may have been COWed). An allocator or device error in the
//!   middle of a split or join leaves the dirty tree unspecified: the caller
//!   must discard the transaction's dirty blocks and roots.
//!
//! Touches `block` (the cache) and `format`; allocation only through the
//! [`MetaAllocator`] trait.

pub mod merge_into;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use drivers::AlignedBuf;
use zerocopy::{FromBytes, IntoBytes};

use crate::block::{Block, BlockCache, Error, Result};
use crate::format::btree::{item_bytes, JOIN_LOW_WATER_BYTES};
use crate::format::btree_block::{encode_node, node_capacity, BlockView, NodeItem};
use crate::format::superblock::BtreeRoot;
use crate::format::{BlockRef, Key, BTREE_MAX_HEIGHT, LG_BLOCK_SIZE, MAGIC_BTREE, MAX_VAL_SIZE};

/// A boxed `Send` future, for the object-safe allocator trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a COW gets new metadata blocks and returns old ones. Implementations
/// must not hand out a freed blkno before the transaction commits.
pub trait MetaAllocator: Send {
    fn alloc_meta(&mut self) -> BoxFuture<'_, Result<u64>>;
    fn free_meta(&mut self, blkno: u64) -> BoxFuture<'_, Result<()>>;
}

/// Bytes of one parent item (56-byte item + 16-byte ref).
const PARENT_ITEM_BYTES: usize = 56 + std::mem::size_of::<BlockRef>();

/// What [`Btree::insert_list`] does with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOp {
    /// Insert or replace the item with this value.
    Put(Vec<u8>),
    /// Remove the item if it exists.
    Delete,
}

/// One entry of a sorted [`Btree::insert_list`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    pub key: Key,
    pub seq: u64,
    pub flags: u8,
    pub op: ListOp,
}

/// Items of one [`Btree::range`] call and where the next call should start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeBatch {
    pub items: Vec<NodeItem>,
    /// `Some(key)` if the batch stopped at its limit before `end`.
    pub next: Option<Key>,
}

/// What [`Btree::check`] found in a valid tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeCheck {
    pub items: usize,
    /// Every block of the tree, in walk order.
    pub blknos: Vec<u64>,
}

/// A node being edited.
struct Node {
    blkno: u64,
    seq: u64,
    level: u8,
    items: Vec<NodeItem>,
}

impl Node {
    fn block_ref(&self) -> BlockRef {
        BlockRef::new(self.blkno, self.seq)
    }

    fn total(&self) -> usize {
        self.items.iter().map(NodeItem::bytes).sum()
    }
}

fn parent_item(key: Key, r: BlockRef) -> NodeItem {
    NodeItem::new(key, r.as_bytes().to_vec())
}

fn child_ref(item: &NodeItem) -> Result<BlockRef> {
    BlockRef::read_from_bytes(&item.val).map_err(|_| {
        Error::corrupt(format!(
            "parent item {} value of {} bytes",
            item.key,
            item.val.len()
        ))
    })
}

fn view_ref(view: &BlockView<'_>, i: usize) -> Result<BlockRef> {
    BlockRef::read_from_bytes(view.value(i))
        .map_err(|_| Error::corrupt(format!("parent item {} has no ref", view.key(i))))
}

/// Drops the parent item at `idx`; when it was the last one, its key (the
/// parent's upper bound) moves to the item before, which now covers its keys.
fn remove_child(parent: &mut Node, idx: usize) {
    let last = idx + 1 == parent.items.len();
    let removed = parent.items.remove(idx);
    if last && idx > 0 {
        parent.items[idx - 1].key = removed.key;
    }
}

fn check_value(val: &[u8]) -> Result<()> {
    if val.len() > MAX_VAL_SIZE {
        return Err(Error::TooBig(val.len()));
    }
    Ok(())
}

fn check_root(root: &BtreeRoot) -> Result<()> {
    if root.height > BTREE_MAX_HEIGHT {
        return Err(Error::corrupt(format!("btree root height {}", root.height)));
    }
    if root.height > 0 && root.ref_.is_null() {
        return Err(Error::corrupt("btree root of height > 0 with a null ref"));
    }
    Ok(())
}

/// A node needs splitting before we enter it if one more item of `need`
/// bytes (a leaf) or one more child (a parent) might not fit.
fn needs_split(node: &Node, need: usize) -> bool {
    let add = if node.level == 0 {
        need
    } else {
        PARENT_ITEM_BYTES
    };
    node.items.len() > 1 && node.total() + add > node_capacity(node.level)
}

/// Index where the first `lower` bytes' worth of items end: both sides keep
/// at least one item.
fn split_point(items: &[NodeItem]) -> usize {
    let total: usize = items.iter().map(NodeItem::bytes).sum();
    let mut moved = 0;
    let mut n = 0;
    while n < items.len() && moved < total / 2 {
        moved += items[n].bytes();
        n += 1;
    }
    n.clamp(1, items.len().saturating_sub(1).max(1))
}

/// Validates a btree block's structure and that it sits at `level`.
fn checked_view(block: &Block, level: u8) -> Result<BlockView<'_>> {
    let view = BlockView::new(block.data())?;
    if view.level() != level {
        return Err(Error::corrupt(format!(
            "btree block {} at level {} where level {level} was expected",
            block.blkno(),
            view.level()
        )));
    }
    if level > 0 && view.is_empty() {
        return Err(Error::corrupt(format!(
            "parent block {} has no items",
            block.blkno()
        )));
    }
    Ok(view)
}

/// The leaf the read-only walk reached, and the bounds its parents gave it.
struct LeafAt {
    block: Arc<Block>,
    /// The key of the parent item that led here (`Key::MAX` at the root).
    upper: Key,
    /// The key of the nearest parent item to the left of the path, if any.
    lower: Option<Key>,
}

/// The btree operations over one block cache.
#[derive(Debug, Clone)]
pub struct Btree {
    cache: Arc<BlockCache>,
}

impl Btree {
    pub fn new(cache: Arc<BlockCache>) -> Self {
        Btree { cache }
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    async fn read_block(&self, r: &BlockRef) -> Result<Arc<Block>> {
        self.cache.read(r, MAGIC_BTREE).await
    }

    async fn load(&self, r: &BlockRef, level: u8) -> Result<Node> {
        let block = self.read_block(r).await?;
        let view = checked_view(&block, level)?;
        let items = (0..view.len()).map(|i| view.node_item(i)).collect();
        Ok(Node {
            blkno: r.blkno.get(),
            seq: r.seq.get(),
            level,
            items,
        })
    }

    /// The writable version of the block `r` names: itself if this
    /// transaction already dirtied it, else a copy at a new blkno with a new
    /// seq (the old blkno is freed and its cached copy evicted).
    async fn cow(&self, r: &BlockRef, level: u8, alloc: &mut dyn MetaAllocator) -> Result<Node> {
        let mut node = self.load(r, level).await?;
        if self.cache.dirty_seq(node.blkno) == Some(node.seq) {
            return Ok(node);
        }
        let new = alloc.alloc_meta().await?;
        let old = node.blkno;
        alloc.free_meta(old).await?;
        self.cache.forget(old);
        node.blkno = new;
        node.seq = self.cache.new_seq();
        Ok(node)
    }

    async fn new_node(
        &self,
        level: u8,
        items: Vec<NodeItem>,
        alloc: &mut dyn MetaAllocator,
    ) -> Result<Node> {
        let blkno = alloc.alloc_meta().await?;
        Ok(Node {
            blkno,
            seq: self.cache.new_seq(),
            level,
            items,
        })
    }

    fn store(&self, node: &Node) -> Result<()> {
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        encode_node(node.level, &node.items, &mut buf)
            .map_err(|e| Error::Io(format!("encoding btree block {}: {e}", node.blkno)))?;
        self.cache
            .put_dirty(node.blkno, node.seq, MAGIC_BTREE, buf)?;
        Ok(())
    }

    async fn free_node(&self, node: &Node, alloc: &mut dyn MetaAllocator) -> Result<()> {
        alloc.free_meta(node.blkno).await?;
        self.cache.forget(node.blkno);
        Ok(())
    }

    // ---- reading ----------------------------------------------------------

    /// Walks to the leaf that would hold `key`. With `clamp`, a key beyond
    /// every parent key follows the last child instead of giving up.
    async fn walk(&self, root: &BtreeRoot, key: &Key, clamp: bool) -> Result<Option<LeafAt>> {
        check_root(root)?;
        if root.is_empty() {
            return Ok(None);
        }
        let mut r = root.ref_;
        let mut level = root.height - 1;
        let mut upper = Key::MAX;
        let mut lower = None;
        loop {
            let block = self.read_block(&r).await?;
            if level == 0 {
                return Ok(Some(LeafAt {
                    block,
                    upper,
                    lower,
                }));
            }
            let view = checked_view(&block, level)?;
            let mut idx = view.lower_bound(key);
            if idx == view.len() {
                if !clamp {
                    return Ok(None);
                }
                idx = view.len() - 1;
            }
            upper = view.key(idx);
            if idx > 0 {
                lower = Some(view.key(idx - 1));
            }
            r = view_ref(&view, idx)?;
            level -= 1;
        }
    }

    /// The item with exactly `key`.
    pub async fn lookup(&self, root: &BtreeRoot, key: &Key) -> Result<Option<NodeItem>> {
        let Some(leaf) = self.walk(root, key, false).await? else {
            return Ok(None);
        };
        let view = checked_view(&leaf.block, 0)?;
        let i = view.lower_bound(key);
        Ok((i < view.len() && view.key(i) == *key).then(|| view.node_item(i)))
    }

    /// The first item with a key >= `key`.
    pub async fn next(&self, root: &BtreeRoot, key: &Key) -> Result<Option<NodeItem>> {
        let mut key = *key;
        loop {
            let Some(leaf) = self.walk(root, &key, false).await? else {
                return Ok(None);
            };
            let view = checked_view(&leaf.block, 0)?;
            let i = view.lower_bound(&key);
            if i < view.len() {
                return Ok(Some(view.node_item(i)));
            }
            if leaf.upper == Key::MAX || leaf.upper < key {
                return Ok(None);
            }
            key = leaf.upper.inc();
        }
    }

    /// The last item with a key <= `key`.
    pub async fn prev(&self, root: &BtreeRoot, key: &Key) -> Result<Option<NodeItem>> {
        let mut key = *key;
        loop {
            let Some(leaf) = self.walk(root, &key, true).await? else {
                return Ok(None);
            };
            let view = checked_view(&leaf.block, 0)?;
            let i = view.lower_bound(&key);
            if i < view.len() && view.key(i) == key {
                return Ok(Some(view.node_item(i)));
            }
            if i > 0 {
                return Ok(Some(view.node_item(i - 1)));
            }
            match leaf.lower {
                Some(l) if l < key => key = l,
                _ => return Ok(None),
            }
        }
    }

    /// Items with keys in `[start, end]`, at most `max_items` of them (at
    /// least one is always allowed). `next` says where to continue.
    pub async fn range(
        &self,
        root: &BtreeRoot,
        start: &Key,
        end: &Key,
        max_items: usize,
    ) -> Result<RangeBatch> {
        let max_items = max_items.max(1);
        let mut batch = RangeBatch::default();
        let mut key = *start;
        while key <= *end {
            let Some(leaf) = self.walk(root, &key, false).await? else {
                break;
            };
            let view = checked_view(&leaf.block, 0)?;
            for i in view.lower_bound(&key)..view.len() {
                let k = view.key(i);
                if k > *end {
                    return Ok(batch);
                }
                if batch.items.len() == max_items {
                    batch.next = Some(k);
                    return Ok(batch);
                }
                batch.items.push(view.node_item(i));
            }
            if leaf.upper >= *end || leaf.upper < key {
                break;
            }
            key = leaf.upper.inc();
        }
        Ok(batch)
    }

    // ---- writing ----------------------------------------------------------

    /// Descends to the leaf for `key`, COWing, splitting (so that `need`
    /// more item bytes fit in the leaf), joining and collapsing on the way,
    /// then lets `f` edit the leaf's items. `f` gets the leaf's upper bound
    /// and must keep the items sorted, unique, below that bound and within
    /// the leaf's capacity.
    async fn edit_leaf<R, F>(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        need: usize,
        f: F,
    ) -> Result<R>
    where
        F: FnOnce(&mut Vec<NodeItem>, Key) -> Result<R> + Send,
    {
        check_root(root)?;
        let mut cur = if root.is_empty() {
            let leaf = self.new_node(0, Vec::new(), alloc).await?;
            root.height = 1;
            leaf
        } else {
            self.cow(&root.ref_, root.height - 1, alloc).await?
        };
        root.ref_ = cur.block_ref();
        let mut upper = Key::MAX;
        loop {
            let is_root = cur.level + 1 == root.height;
            if is_root && needs_split(&cur, need) {
                if root.height >= BTREE_MAX_HEIGHT {
                    return Err(Error::NoSpace(format!(
                        "btree at its height limit {BTREE_MAX_HEIGHT}"
                    )));
                }
                // Grow: a new root with the old one as its only child; the
                // descent below splits that child like any other.
                self.store(&cur)?;
                let grown = self
                    .new_node(
                        cur.level + 1,
                        vec![parent_item(Key::MAX, cur.block_ref())],
                        alloc,
                    )
                    .await?;
                root.height += 1;
                root.ref_ = grown.block_ref();
                cur = grown;
            } else if is_root && cur.level > 0 && cur.items.len() == 1 {
                // A root parent with one child: the child becomes the root.
                let r = child_ref(&cur.items[0])?;
                self.free_node(&cur, alloc).await?;
                root.height -= 1;
                cur = self.cow(&r, root.height - 1, alloc).await?;
                root.ref_ = cur.block_ref();
                continue;
            }
            if cur.level == 0 {
                let res = f(&mut cur.items, upper);
                if is_root && cur.items.is_empty() {
                    self.free_node(&cur, alloc).await?;
                    *root = BtreeRoot::default();
                } else {
                    self.store(&cur)?;
                }
                return res;
            }

            let mut idx = cur.items.partition_point(|it| it.key < *key);
            if idx == cur.items.len() {
                return Err(Error::corrupt(format!(
                    "key {key} beyond the last parent key in block {}",
                    cur.blkno
                )));
            }
            let r = child_ref(&cur.items[idx])?;
            let mut child = self.cow(&r, cur.level - 1, alloc).await?;
            cur.items[idx].val = child.block_ref().as_bytes().to_vec();

            if child.total() < JOIN_LOW_WATER_BYTES && cur.items.len() > 1 {
                let (c, i) = self.join(&mut cur, child, idx, key, alloc).await?;
                child = c;
                idx = i;
                if is_root && cur.items.len() == 1 {
                    self.free_node(&cur, alloc).await?;
                    root.height -= 1;
                    root.ref_ = child.block_ref();
                    cur = child;
                    continue;
                }
            }

            if needs_split(&child, need) {
                let at = split_point(&child.items);
                let lower: Vec<NodeItem> = child.items.drain(..at).collect();
                let left_key = lower.last().map(|it| it.key).unwrap_or(Key::MIN);
                let left = self.new_node(child.level, lower, alloc).await?;
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
            upper = cur.items[idx].key;
            if child.level == 0 {
                // The leaf is edited with its parent in hand, so a leaf the
                // edit empties leaves the tree at once (check faults an
                // empty non-root block, and nothing may come back to join it).
                let res = f(&mut child.items, upper);
                if child.items.is_empty() && cur.items.len() > 1 {
                    self.free_node(&child, alloc).await?;
                    remove_child(&mut cur, idx);
                    if is_root && cur.items.len() == 1 {
                        let only = child_ref(&cur.items[0])?;
                        self.free_node(&cur, alloc).await?;
                        root.height -= 1;
                        root.ref_ = only;
                        return res;
                    }
                } else {
                    self.store(&child)?;
                }
                self.store(&cur)?;
                return res;
            }
            self.store(&cur)?;
            cur = child;
        }
    }

    /// Joins `child` (at `idx` in `parent`) with a sibling: merges the two if
    /// they fit in one block (the child survives and takes the larger parent
    /// key), else moves items so both hold about half. Returns the node to
    /// descend into for `key` and its index; the other one is stored.
    async fn join(
        &self,
        parent: &mut Node,
        mut child: Node,
        idx: usize,
        key: &Key,
        alloc: &mut dyn MetaAllocator,
    ) -> Result<(Node, usize)> {
        let sib_idx = if idx > 0 { idx - 1 } else { idx + 1 };
        let sib_ref = child_ref(&parent.items[sib_idx])?;
        let sib = self.load(&sib_ref, child.level).await?;
        let (left_idx, right_idx) = (idx.min(sib_idx), idx.max(sib_idx));
        if child.total() + sib.total() <= node_capacity(child.level) {
            self.free_node(&sib, alloc).await?;
            if sib_idx < idx {
                let mut items = sib.items;
                items.append(&mut child.items);
                child.items = items;
            } else {
                child.items.extend(sib.items);
            }
            let right_key = parent.items[right_idx].key;
            parent.items.remove(sib_idx);
            parent.items[left_idx] = parent_item(right_key, child.block_ref());
            return Ok((child, left_idx));
        }
        let mut sib = self.cow(&sib_ref, child.level, alloc).await?;
        let (mut left, mut right) = if sib_idx < idx {
            (sib, child)
        } else {
            (child, sib)
        };
        let mut all = std::mem::take(&mut left.items);
        all.append(&mut right.items);
        let at = split_point(&all);
        right.items = all.split_off(at);
        left.items = all;
        let left_key = left.items.last().map(|it| it.key).unwrap_or(Key::MIN);
        parent.items[left_idx] = parent_item(left_key, left.block_ref());
        parent.items[right_idx].val = right.block_ref().as_bytes().to_vec();
        if *key <= left_key {
            self.store(&right)?;
            Ok((left, left_idx))
        } else {
            self.store(&left)?;
            sib = right;
            Ok((sib, right_idx))
        }
    }

    /// Inserts a new item; `Error::Exists` if the key is present.
    pub async fn insert(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        val: &[u8],
    ) -> Result<()> {
        check_value(val)?;
        let item = NodeItem::new(*key, val.to_vec());
        self.edit_leaf(
            root,
            alloc,
            key,
            item_bytes(val.len()),
            move |items, _| match items.binary_search_by(|it| it.key.cmp(&item.key)) {
                Ok(_) => Err(Error::Exists),
                Err(i) => {
                    items.insert(i, item);
                    Ok(())
                }
            },
        )
        .await
    }

    /// Replaces the value of an existing item; `Error::NotFound` if absent.
    pub async fn update(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        val: &[u8],
    ) -> Result<()> {
        check_value(val)?;
        if root.is_empty() {
            return Err(Error::NotFound);
        }
        let val = val.to_vec();
        let k = *key;
        self.edit_leaf(
            root,
            alloc,
            key,
            item_bytes(val.len()),
            move |items, _| match items.binary_search_by(|it| it.key.cmp(&k)) {
                Ok(i) => {
                    items[i].val = val;
                    Ok(())
                }
                Err(_) => Err(Error::NotFound),
            },
        )
        .await
    }

    /// Inserts or replaces an item.
    pub async fn force(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
        val: &[u8],
    ) -> Result<()> {
        check_value(val)?;
        let item = NodeItem::new(*key, val.to_vec());
        self.edit_leaf(root, alloc, key, item_bytes(val.len()), move |items, _| {
            match items.binary_search_by(|it| it.key.cmp(&item.key)) {
                Ok(i) => items[i] = item,
                Err(i) => items.insert(i, item),
            }
            Ok(())
        })
        .await
    }

    /// Removes an item and returns it; `Error::NotFound` if absent.
    pub async fn delete(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        key: &Key,
    ) -> Result<NodeItem> {
        if root.is_empty() {
            return Err(Error::NotFound);
        }
        let k = *key;
        self.edit_leaf(root, alloc, key, 0, move |items, _| {
            match items.binary_search_by(|it| it.key.cmp(&k)) {
                Ok(i) => Ok(items.remove(i)),
                Err(_) => Err(Error::NotFound),
            }
        })
        .await
    }

    /// Applies a batch sorted by strictly increasing key, with one descent
    /// per leaf: each leaf takes every following entry below its upper bound
    /// that fits. `Put` sets seq and flags as given; `Delete` of an absent
    /// key is not an error.
    pub async fn insert_list(
        &self,
        root: &mut BtreeRoot,
        alloc: &mut dyn MetaAllocator,
        list: &[ListItem],
    ) -> Result<()> {
        if list.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(Error::Invalid(
                "insert_list keys not strictly increasing".into(),
            ));
        }
        for li in list {
            if let ListOp::Put(v) = &li.op {
                check_value(v)?;
            }
        }
        let mut pos = 0;
        while pos < list.len() {
            let first = &list[pos];
            if first.op == ListOp::Delete && root.is_empty() {
                pos += 1;
                continue;
            }
            let need = match &first.op {
                ListOp::Put(v) => item_bytes(v.len()),
                ListOp::Delete => 0,
            };
            let rest = &list[pos..];
            let applied = self
                .edit_leaf(root, alloc, &first.key, need, move |items, upper| {
                    let cap = node_capacity(0);
                    let mut total: usize = items.iter().map(NodeItem::bytes).sum();
                    let mut n = 0;
                    for li in rest {
                        if li.key > upper {
                            break;
                        }
                        let found = items.binary_search_by(|it| it.key.cmp(&li.key));
                        match (&li.op, found) {
                            (ListOp::Delete, Ok(i)) => {
                                total -= items.remove(i).bytes();
                            }
                            (ListOp::Delete, Err(_)) => {}
                            (ListOp::Put(v), found) => {
                                let old = found.map_or(0, |i| items[i].bytes());
                                if total - old + item_bytes(v.len()) > cap {
                                    break;
                                }
                                total = total - old + item_bytes(v.len());
                                let it = NodeItem {
                                    key: li.key,
                                    seq: li.seq,
                                    flags: li.flags,
                                    val: v.clone(),
                                };
                                match found {
                                    Ok(i) => items[i] = it,
                                    Err(i) => items.insert(i, it),
                                }
                            }
                        }
                        n += 1;
                    }
                    Ok(n)
                })
                .await?;
            if applied == 0 {
                return Err(Error::Io(format!(
                    "insert_list made no progress at {}",
                    first.key
                )));
            }
            pos += applied;
        }
        Ok(())
    }

    /// Walks every block of the tree and checks it: header and ref (through
    /// the cache), block structure and leaf hash table (`BlockView`), levels,
    /// and that every key lies within the bounds its parents give it.
    pub async fn check(&self, root: &BtreeRoot) -> Result<TreeCheck> {
        check_root(root)?;
        let mut out = TreeCheck::default();
        if root.is_empty() {
            return Ok(out);
        }
        // (ref, level, exclusive lower bound, inclusive upper bound)
        let mut stack = vec![(root.ref_, root.height - 1, None::<Key>, Key::MAX)];
        while let Some((r, level, lo, hi)) = stack.pop() {
            let block = self.read_block(&r).await?;
            let view = checked_view(&block, level)?;
            out.blknos.push(r.blkno.get());
            if level == 0 {
                view.check_hash_table()?;
                out.items += view.len();
            }
            let mut prev = lo;
            for i in 0..view.len() {
                let k = view.key(i);
                if lo.is_some_and(|l| k <= l) || k > hi {
                    return Err(Error::corrupt(format!(
                        "block {} key {k} outside its parent's bounds",
                        r.blkno.get()
                    )));
                }
                if level > 0 {
                    stack.push((view_ref(&view, i)?, level - 1, prev, k));
                }
                prev = Some(k);
            }
        }
        let mut sorted = out.blknos.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::corrupt("a block is referenced twice"));
        }
        Ok(out)
    }
}
