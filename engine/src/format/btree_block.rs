//! Reading and writing whole btree blocks.
//!
//! [`BlockView`] validates and walks a block as the original lays it out: a
//! dense item array ordered by an AVL tree of offset links, values packed
//! toward the end, and (in leaves) a hash table of item offsets. Any
//! well-formed binary search tree is accepted: heights and balance are not
//! checked, because the original mkfs writes unbalanced chains.
//!
//! [`encode_node`] writes a sorted list of items as a fresh block with a
//! balanced AVL tree, correct heights and a populated hash table. The btree
//! code edits nodes as sorted vectors and re-encodes them at COW time, so the
//! in-block structures are built in exactly one place.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, IntoBytes};

use super::btree::*;
use super::key::{DiskKey, Key};
use super::{read_struct, FormatError, LG_BLOCK_SIZE, MAX_VAL_SIZE};

fn corrupt(msg: String) -> FormatError {
    FormatError::Corrupt(msg)
}

/// A validated, read-only look at one btree block.
pub struct BlockView<'a> {
    bytes: &'a [u8],
    pub header: &'a BtreeBlockHeader,
    /// Item offsets in key order.
    order: Vec<usize>,
}

impl<'a> BlockView<'a> {
    /// Checks the block's internal structure (not its header: the caller
    /// has already checked crc, magic and ref).
    pub fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        if bytes.len() != LG_BLOCK_SIZE {
            return Err(FormatError::Short {
                need: LG_BLOCK_SIZE,
                got: bytes.len(),
            });
        }
        let header: &BtreeBlockHeader = read_struct(bytes)?;
        let nr = header.nr_items.get() as usize;
        let items_end = BTREE_HEADER_BYTES + nr * BTREE_ITEM_BYTES;
        let limit = if header.level == 0 {
            LEAF_HASH_OFFSET
        } else {
            LG_BLOCK_SIZE
        };
        if items_end > limit {
            return Err(corrupt(format!("{nr} items overflow the block")));
        }
        let mut view = BlockView {
            bytes,
            header,
            order: Vec::with_capacity(nr),
        };
        view.order = view.walk(nr, items_end)?;
        let mut total = 0usize;
        let mut prev: Option<Key> = None;
        for &off in &view.order {
            let item = view.item(off);
            let key = Key::from_disk(&item.key)
                .map_err(|e| corrupt(format!("item at offset {off}: {e}")))?;
            if prev.is_some_and(|p| p >= key) {
                return Err(corrupt(format!(
                    "item at offset {off}: key {key} out of order"
                )));
            }
            prev = Some(key);
            let vlen = item.val_len.get() as usize;
            let voff = item.val_off.get() as usize;
            if vlen > MAX_VAL_SIZE {
                return Err(corrupt(format!(
                    "item at offset {off}: value of {vlen} bytes"
                )));
            }
            if vlen == 0 {
                if voff != 0 {
                    return Err(corrupt(format!(
                        "item at offset {off}: empty value at {voff}"
                    )));
                }
            } else if voff < items_end || voff + vlen > limit {
                return Err(corrupt(format!(
                    "item at offset {off}: value {voff}+{vlen} outside {items_end}..{limit}"
                )));
            }
            if header.level > 0 && vlen != std::mem::size_of::<super::BlockRef>() {
                return Err(corrupt(format!(
                    "parent item at offset {off}: value of {vlen} bytes"
                )));
            }
            total += item_bytes(vlen);
        }
        if total != header.total_item_bytes.get() as usize {
            return Err(corrupt(format!(
                "total_item_bytes {} but items use {total}",
                header.total_item_bytes.get()
            )));
        }
        Ok(view)
    }

    /// In-order AVL walk that refuses links outside the item array, links
    /// that are not item starts, and cycles.
    fn walk(&self, nr: usize, items_end: usize) -> Result<Vec<usize>, FormatError> {
        let to_off = |link: u16, what: &str| -> Result<Option<usize>, FormatError> {
            match link_to_offset(link) {
                None => Ok(None),
                Some(off)
                    if off >= BTREE_HEADER_BYTES
                        && off < items_end
                        && (off - BTREE_HEADER_BYTES).is_multiple_of(BTREE_ITEM_BYTES) =>
                {
                    Ok(Some(off))
                }
                Some(off) => Err(corrupt(format!(
                    "{what} link to offset {off} is not an item"
                ))),
            }
        };
        let mut order = Vec::with_capacity(nr);
        let mut seen = vec![false; nr];
        let mut stack: Vec<usize> = Vec::new();
        let mut cur = to_off(self.header.item_root.get(), "root")?;
        if nr == 0 && cur.is_some() {
            return Err(corrupt("empty block has a root item".into()));
        }
        loop {
            while let Some(off) = cur {
                let idx = (off - BTREE_HEADER_BYTES) / BTREE_ITEM_BYTES;
                if std::mem::replace(&mut seen[idx], true) {
                    return Err(corrupt(format!("item at offset {off} linked twice")));
                }
                stack.push(off);
                cur = to_off(self.item(off).node.left.get(), "left")?;
            }
            let Some(off) = stack.pop() else { break };
            order.push(off);
            cur = to_off(self.item(off).node.right.get(), "right")?;
        }
        if order.len() != nr {
            return Err(corrupt(format!(
                "avl tree reaches {} of {nr} items",
                order.len()
            )));
        }
        Ok(order)
    }

    fn item(&self, off: usize) -> &'a BtreeItem {
        read_struct(&self.bytes[off..]).expect("offset validated")
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn level(&self) -> u8 {
        self.header.level
    }

    pub fn is_leaf(&self) -> bool {
        self.header.level == 0
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Item offsets in key order.
    pub fn offsets(&self) -> &[usize] {
        &self.order
    }

    /// The raw item at a validated offset.
    pub fn raw_item(&self, off: usize) -> &'a BtreeItem {
        self.item(off)
    }

    /// Key of the `i`th item in key order.
    pub fn key(&self, i: usize) -> Key {
        Key::from_disk_unchecked(&self.item(self.order[i]).key)
    }

    /// Value of the `i`th item in key order.
    pub fn value(&self, i: usize) -> &'a [u8] {
        let item = self.item(self.order[i]);
        let off = item.val_off.get() as usize;
        &self.bytes[off..off + item.val_len.get() as usize]
    }

    /// The `i`th item in key order as an owned node item.
    pub fn node_item(&self, i: usize) -> NodeItem {
        let item = self.item(self.order[i]);
        NodeItem {
            key: self.key(i),
            seq: item.seq.get(),
            flags: item.flags,
            val: self.value(i).to_vec(),
        }
    }

    /// The leaf hash table (empty for parents).
    pub fn hash_buckets(&self) -> &'a [U16] {
        if !self.is_leaf() {
            return &[];
        }
        <[U16]>::ref_from_bytes(&self.bytes[LEAF_HASH_OFFSET..]).expect("aligned table")
    }

    /// Checks that every item sits in the hash table's probe run from its
    /// home bucket and that no bucket names a non-item. Returns a description
    /// of the first fault.
    pub fn check_hash_table(&self) -> Result<(), FormatError> {
        let buckets = self.hash_buckets();
        let mut found = 0usize;
        for (b, slot) in buckets.iter().enumerate() {
            let off = slot.get() as usize;
            if off == 0 {
                continue;
            }
            if !self.order.contains(&off) {
                return Err(corrupt(format!(
                    "hash bucket {b} names offset {off}, not an item"
                )));
            }
            found += 1;
        }
        if found != self.order.len() {
            return Err(corrupt(format!(
                "hash table holds {found} of {} items",
                self.order.len()
            )));
        }
        for &off in &self.order {
            if self.hash_find(&self.item(off).key) != Some(off) {
                return Err(corrupt(format!(
                    "item at offset {off} not reachable by its hash"
                )));
            }
        }
        Ok(())
    }

    /// Finds a key in a leaf by its hash, the way exact lookups do.
    pub fn hash_find(&self, key: &DiskKey) -> Option<usize> {
        let buckets = self.hash_buckets();
        let mut b = leaf_hash_bucket(key);
        for _ in 0..buckets.len() {
            let off = buckets[b].get() as usize;
            if off == 0 {
                return None;
            }
            if self.order.contains(&off) && self.item(off).key == *key {
                return Some(off);
            }
            b = (b + 1) % LEAF_HASH_BUCKETS;
        }
        None
    }

    /// Index (in key order) of the first item with key >= `key`.
    pub fn lower_bound(&self, key: &Key) -> usize {
        self.order
            .partition_point(|&off| Key::from_disk_unchecked(&self.item(off).key) < *key)
    }
}

/// One item of a node being edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeItem {
    pub key: Key,
    pub seq: u64,
    pub flags: u8,
    pub val: Vec<u8>,
}

impl NodeItem {
    pub fn new(key: Key, val: Vec<u8>) -> Self {
        NodeItem {
            key,
            seq: 0,
            flags: 0,
            val,
        }
    }

    pub fn bytes(&self) -> usize {
        item_bytes(self.val.len())
    }
}

/// Item bytes a node of this level can hold.
pub fn node_capacity(level: u8) -> usize {
    if level == 0 {
        LEAF_EMPTY_FREE
    } else {
        PARENT_EMPTY_FREE
    }
}

/// Writes `items` (sorted, unique keys) as a btree block body into `out`
/// (one large block). The block header fields are left for the caller to
/// seal. Fails if the items don't fit.
pub fn encode_node(level: u8, items: &[NodeItem], out: &mut [u8]) -> Result<(), FormatError> {
    assert_eq!(out.len(), LG_BLOCK_SIZE);
    debug_assert!(
        items.windows(2).all(|w| w[0].key < w[1].key),
        "node items not sorted"
    );
    let total: usize = items.iter().map(NodeItem::bytes).sum();
    if total > node_capacity(level) {
        return Err(corrupt(format!(
            "{total} item bytes exceed a level {level} block"
        )));
    }
    let hdr_copy = *read_struct::<super::BlockHeader>(out)?;
    out.fill(0);
    let mut val_end = if level == 0 {
        LEAF_HASH_OFFSET
    } else {
        LG_BLOCK_SIZE
    };
    let item_off = |i: usize| BTREE_HEADER_BYTES + i * BTREE_ITEM_BYTES;
    let mut heights = vec![0u8; items.len()];
    let root = build_avl(out, 0, items.len(), 0, &mut heights);
    for (i, it) in items.iter().enumerate() {
        if it.val.len() > MAX_VAL_SIZE {
            return Err(corrupt(format!("value of {} bytes", it.val.len())));
        }
        let off = item_off(i);
        let voff = if it.val.is_empty() {
            0
        } else {
            val_end -= it.val.len().next_multiple_of(8);
            out[val_end..val_end + it.val.len()].copy_from_slice(&it.val);
            val_end
        };
        let raw: &mut BtreeItem = super::read_struct_mut(&mut out[off..])?;
        raw.key = it.key.to_disk();
        raw.seq = it.seq.into();
        raw.val_off = (voff as u16).into();
        raw.val_len = (it.val.len() as u16).into();
        raw.flags = it.flags;
        raw.node.height = heights[i];
    }
    if level == 0 {
        for (i, it) in items.iter().enumerate() {
            let mut b = leaf_hash_bucket(&it.key.to_disk());
            loop {
                let at = LEAF_HASH_OFFSET + b * 2;
                if out[at..at + 2] == [0, 0] {
                    out[at..at + 2].copy_from_slice(&(item_off(i) as u16).to_le_bytes());
                    break;
                }
                b = (b + 1) % LEAF_HASH_BUCKETS;
            }
        }
    }
    let header: &mut BtreeBlockHeader = super::read_struct_mut(out)?;
    header.hdr = hdr_copy;
    header.item_root = root.map_or(0, |i| offset_to_link(item_off(i))).into();
    header.nr_items = (items.len() as u16).into();
    header.total_item_bytes = (total as u16).into();
    header.mid_free_len = ((val_end - item_off(items.len())) as u16).into();
    header.level = level;
    Ok(())
}

/// Links items `[lo, hi)` into a balanced subtree under `parent_link`,
/// returning the subtree root's index.
fn build_avl(
    out: &mut [u8],
    lo: usize,
    hi: usize,
    parent_link: u16,
    heights: &mut [u8],
) -> Option<usize> {
    if lo >= hi {
        return None;
    }
    let mid = lo + (hi - lo) / 2;
    let off = BTREE_HEADER_BYTES + mid * BTREE_ITEM_BYTES;
    let link = offset_to_link(off);
    let left = build_avl(out, lo, mid, link, heights);
    let right = build_avl(out, mid + 1, hi, link, heights);
    let h = |c: Option<usize>, heights: &[u8]| c.map_or(0, |i| heights[i]);
    heights[mid] = 1 + h(left, heights).max(h(right, heights));
    let to_link = |c: Option<usize>| {
        c.map_or(0, |i| {
            offset_to_link(BTREE_HEADER_BYTES + i * BTREE_ITEM_BYTES)
        })
    };
    let node = AvlNode {
        parent: parent_link.into(),
        left: to_link(left).into(),
        right: to_link(right).into(),
        height: heights[mid],
        pad: 0,
    };
    out[off..off + 8].copy_from_slice(node.as_bytes());
    Some(mid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, vlen: usize) -> Vec<NodeItem> {
        (0..n)
            .map(|i| NodeItem::new(Key::new(16, i as u64, 4, 0, 0, 0), vec![i as u8; vlen]))
            .collect()
    }

    #[test]
    fn encode_then_view_round_trips() {
        for n in [0, 1, 2, 3, 7, 100] {
            let its = items(n, 13);
            let mut buf = vec![0u8; LG_BLOCK_SIZE];
            encode_node(0, &its, &mut buf).unwrap();
            let v = BlockView::new(&buf).unwrap();
            assert_eq!(v.len(), n);
            v.check_hash_table().unwrap();
            for (i, it) in its.iter().enumerate() {
                assert_eq!(&v.node_item(i), it);
                assert!(v.hash_find(&it.key.to_disk()).is_some());
            }
        }
    }

    #[test]
    fn overfull_node_is_refused() {
        let its = items(LEAF_EMPTY_FREE / BTREE_ITEM_BYTES + 1, 0);
        let mut buf = vec![0u8; LG_BLOCK_SIZE];
        assert!(encode_node(0, &its, &mut buf).is_err());
    }

    #[test]
    fn cyclic_links_are_corruption() {
        let its = items(3, 0);
        let mut buf = vec![0u8; LG_BLOCK_SIZE];
        encode_node(0, &its, &mut buf).unwrap();
        // Point the leftmost item's left link back at the root.
        let root = u16::from_le_bytes([buf[32], buf[33]]);
        let first = BTREE_HEADER_BYTES;
        buf[first + 2..first + 4].copy_from_slice(&root.to_le_bytes());
        assert!(BlockView::new(&buf).is_err());
    }
}
