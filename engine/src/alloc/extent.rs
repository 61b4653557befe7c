//! The free-extent allocator: a btree of free extents under an `AllocRoot`.
//!
//! Each free extent `[start, start+len)` is two value-less items:
//! `free_blkno_key` (zone FREE_EXTENT_BLKNO, by last block, to find
//! neighbours) and `free_order_key` (zone FREE_EXTENT_ORDER, largest order
//! first). Guarantees: both indexes always describe the same extents;
//! `total_len` is the exact sum of their lengths; frees merge with adjacent
//! extents so no two stored extents touch; a free that overlaps a free extent
//! is refused (`Error::Invalid`) rather than corrupting the tree. The tree's
//! own blocks are COWed through the caller's `MetaAllocator`.
//!
//! Touches `btree`, `block` (errors) and `format::alloc`.

use crate::block::{Error, Result};
use crate::btree::{Btree, MetaAllocator};
use crate::format::alloc::{free_blkno_key, free_extent_from_key, free_order_key};
use crate::format::key::zone;
use crate::format::superblock::{AllocRoot, ALLOC_FLAG_LOW};
use crate::format::Key;

/// Items read per btree range call while walking extents.
const EXTENT_BATCH_ITEMS: usize = 512;

async fn insert_pair(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<()> {
    let map = |e: Error| match e {
        Error::Exists => Error::corrupt(format!("free extent {start}+{len} already indexed")),
        e => e,
    };
    btree
        .insert(&mut root.root, meta, &free_blkno_key(start, len), &[])
        .await
        .map_err(map)?;
    btree
        .insert(&mut root.root, meta, &free_order_key(start, len), &[])
        .await
        .map_err(map)
}

async fn remove_pair(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<()> {
    let map = |e: Error| match e {
        Error::NotFound => {
            Error::corrupt(format!("free extent {start}+{len} missing from an index"))
        }
        e => e,
    };
    btree
        .delete(&mut root.root, meta, &free_blkno_key(start, len))
        .await
        .map_err(map)?;
    btree
        .delete(&mut root.root, meta, &free_order_key(start, len))
        .await
        .map_err(map)?;
    Ok(())
}

/// Allocates up to `max_len` contiguous blocks from the front of the
/// largest free extent. Returns `(start, len)`; `Error::NoSpace` if empty.
pub async fn alloc_extent(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    root: &mut AllocRoot,
    max_len: u64,
) -> Result<(u64, u64)> {
    if max_len == 0 {
        return Err(Error::Invalid("allocating 0 blocks".into()));
    }
    let first = Key::new(zone::FREE_EXTENT_ORDER, 0, 0, 0, 0, 0);
    let Some(item) = btree.next(&root.root, &first).await? else {
        return Err(Error::NoSpace("no free extents".into()));
    };
    if item.key.zone != zone::FREE_EXTENT_ORDER {
        return Err(Error::NoSpace("no free extents".into()));
    }
    let (start, len) = free_extent_from_key(&item.key)
        .ok_or_else(|| Error::corrupt(format!("free extent key {}", item.key)))?;
    let take = len.min(max_len);
    let total = root.total_len.get();
    if total < take {
        return Err(Error::corrupt(format!(
            "alloc root total_len {total} below extent {start}+{len}"
        )));
    }
    remove_pair(btree, meta, root, start, len).await?;
    if len > take {
        insert_pair(btree, meta, root, start + take, len - take).await?;
    }
    root.total_len = (total - take).into();
    Ok((start, take))
}

/// Returns `[start, start+len)` to the free extents, merging with the
/// neighbours on either side.
pub async fn free_extent(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<()> {
    let end = start
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or_else(|| Error::Invalid(format!("freeing extent {start}+{len}")))?;
    let (mut s, mut e) = (start, end);
    // The first extent whose last block is >= start: an overlap or the right neighbour.
    if let Some(item) = btree
        .next(
            &root.root,
            &Key::new(zone::FREE_EXTENT_BLKNO, start, 0, 0, 0, 0),
        )
        .await?
    {
        if item.key.zone == zone::FREE_EXTENT_BLKNO {
            let (ns, nl) = free_extent_from_key(&item.key)
                .ok_or_else(|| Error::corrupt(format!("free extent key {}", item.key)))?;
            if ns < end {
                return Err(Error::Invalid(format!(
                    "freeing {start}+{len} overlaps free extent {ns}+{nl}"
                )));
            }
            if ns == end {
                remove_pair(btree, meta, root, ns, nl).await?;
                e = ns + nl;
            }
        }
    }
    if start > 0 {
        let below = Key::new(
            zone::FREE_EXTENT_BLKNO,
            start - 1,
            u8::MAX,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        );
        if let Some(item) = btree.prev(&root.root, &below).await? {
            if item.key.zone == zone::FREE_EXTENT_BLKNO {
                let (ps, pl) = free_extent_from_key(&item.key)
                    .ok_or_else(|| Error::corrupt(format!("free extent key {}", item.key)))?;
                if ps + pl == start {
                    remove_pair(btree, meta, root, ps, pl).await?;
                    s = ps;
                }
            }
        }
    }
    insert_pair(btree, meta, root, s, e - s).await?;
    let total = root
        .total_len
        .get()
        .checked_add(len)
        .ok_or_else(|| Error::corrupt("alloc root total_len overflows"))?;
    root.total_len = total.into();
    Ok(())
}

/// Sets the LOW flag when fewer than `low_blocks` are free, clears it
/// otherwise. Returns whether it is set.
pub fn set_low_flag(root: &mut AllocRoot, low_blocks: u64) -> bool {
    let low = root.total_len.get() < low_blocks;
    let flags = root.flags.get();
    root.flags = if low {
        flags | ALLOC_FLAG_LOW
    } else {
        flags & !ALLOC_FLAG_LOW
    }
    .into();
    low
}

/// The free extents of a valid allocator, by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentCheck {
    pub extents: Vec<(u64, u64)>,
    pub total_len: u64,
}

async fn zone_extents(btree: &Btree, root: &AllocRoot, z: u8) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut key = Key::new(z, 0, 0, 0, 0, 0);
    let end = Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    loop {
        let batch = btree
            .range(&root.root, &key, &end, EXTENT_BATCH_ITEMS)
            .await?;
        for it in &batch.items {
            if !it.val.is_empty() {
                return Err(Error::corrupt(format!(
                    "free extent item {} has a value",
                    it.key
                )));
            }
            let ext = free_extent_from_key(&it.key)
                .ok_or_else(|| Error::corrupt(format!("free extent key {}", it.key)))?;
            if z == zone::FREE_EXTENT_ORDER && it.key != free_order_key(ext.0, ext.1) {
                return Err(Error::corrupt(format!(
                    "order key {} has the wrong order",
                    it.key
                )));
            }
            out.push(ext);
        }
        match batch.next {
            Some(k) => key = k,
            None => return Ok(out),
        }
    }
}

/// Checks that both indexes hold the same extents, that no two extents
/// overlap or touch, and that `total_len` is their sum.
pub async fn check_extents(btree: &Btree, root: &AllocRoot) -> Result<ExtentCheck> {
    let by_pos = zone_extents(btree, root, zone::FREE_EXTENT_BLKNO).await?;
    let mut by_order = zone_extents(btree, root, zone::FREE_EXTENT_ORDER).await?;
    by_order.sort_unstable();
    if by_pos != by_order {
        return Err(Error::corrupt("free extent indexes disagree"));
    }
    let mut total = 0u64;
    for w in by_pos.windows(2) {
        if w[0].0 + w[0].1 >= w[1].0 {
            return Err(Error::corrupt(format!(
                "free extents {:?} and {:?} touch",
                w[0], w[1]
            )));
        }
    }
    for &(_, l) in &by_pos {
        total += l;
    }
    if total != root.total_len.get() {
        return Err(Error::corrupt(format!(
            "total_len {} but extents hold {total}",
            root.total_len.get()
        )));
    }
    Ok(ExtentCheck {
        extents: by_pos,
        total_len: total,
    })
}
