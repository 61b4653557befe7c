//! Quota rules over `.totl.` totals (reference §1.5 "Quota rule", §9
//! "Quotas", §12 "Quota rule key") and the stable-root reads of tagged
//! xattrs (`read-xattr-totals`, `read-xattr-index`).
//!
//! * Rules are items `10/0/4/rule_hash/collision_nr` holding the 48-byte
//!   [`QuotaRule`]; `rule_hash` is fnv1a64 of the value with its pad zeroed
//!   and the collision number is the first unused one from 0. Adding a rule
//!   that exists is EEXIST; deleting one that does not is ENOENT.
//! * Enforcement: on inode creation (op I, the new inode's uid/gid/proj)
//!   and on data allocation (op D, the file's), the highest-sorting rule of
//!   that op whose selectors all match ([`rule_order`]) names a totl key
//!   (literal components, or the inode's proj/uid/gid); if that total — or
//!   its count with the C flag — is ≥ the limit, the operation fails with
//!   EDQUOT before it changes anything.
//! * Rules and totals are read through the [`StableItems`] weak reader
//!   (committed state of every mount), never through the locked item cache,
//!   so a rule added on one mount is enforced on all of them. Each mount
//!   keeps its ruleset and the totals it checked for [`QUOTA_VALIDITY`] (a
//!   frontend may change it), and [`Fs::invalidate_quota_rules`] drops both
//!   at once: the entry point for the quota cluster lock's invalidation.
//!   Rule changes commit this mount's transaction before reading (so its
//!   own changes are seen) and after writing (so other mounts see the
//!   change within one validity period).
//! * An `Fs` without a stable reader ([`Fs::set_stable_items`]) enforces
//!   nothing and refuses the rule and tag reads (EOPNOTSUPP).
//!
//! Touches [`crate::weak`] (the reader), the item API (rule writes) and
//! [`crate::format::items`] encodings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use super::{Ctx, Fs, FsResult, Time, S_ISGID};
use crate::format::items::Inode;
use crate::format::items::{
    indx_fields, indx_key, quota_rule_key, QuotaRule, QUOTA_NAME_FLAG_SELECT, QUOTA_OP_DATA,
    QUOTA_OP_INODE, QUOTA_RULE_FLAG_TOTL_COUNT, QUOTA_SOURCE_GID, QUOTA_SOURCE_LITERAL,
    QUOTA_SOURCE_PROJ, QUOTA_SOURCE_UID,
};
use crate::format::key::{zone, Key, QUOTA_RULE_TYPE};
use crate::format::FORMAT_VERSION_V2;
use crate::lock::{quota_lock, LockMode};
use crate::weak::{StableItems, Total};

/// How long a mount trusts its ruleset and the totals it checked.
pub const QUOTA_VALIDITY: Duration = Duration::from_secs(2);
/// Rules read per weak-read batch.
const RULES_BATCH: usize = 1024;

/// The attributes a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaAttrs {
    pub uid: u32,
    pub gid: u32,
    pub proj: u64,
}

impl QuotaAttrs {
    pub fn of(i: &Inode) -> QuotaAttrs {
        QuotaAttrs {
            uid: i.uid.get(),
            gid: i.gid.get(),
            proj: i.proj.get(),
        }
    }
}

/// Counters of the tag and quota features (the status tree shows them).
#[derive(Debug, Default)]
pub struct TagCounters {
    pub totl_reads: AtomicU64,
    pub indx_reads: AtomicU64,
    pub quota_checks: AtomicU64,
    pub quota_edquot: AtomicU64,
    pub quota_rule_reads: AtomicU64,
    pub srch_searches: AtomicU64,
}

impl TagCounters {
    /// (name, value) of every counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("quota_checks", g(&self.quota_checks)),
            ("quota_edquot", g(&self.quota_edquot)),
            ("quota_rule_reads", g(&self.quota_rule_reads)),
            ("srch_search_xattrs", g(&self.srch_searches)),
            ("xattr_indx_reads", g(&self.indx_reads)),
            ("xattr_totl_reads", g(&self.totl_reads)),
        ]
    }
}

/// What the mount remembers between checks.
#[derive(Default)]
pub(crate) struct QuotaState {
    stable: Option<Arc<dyn StableItems>>,
    validity: Option<Duration>,
    rules: Option<(Vec<QuotaRule>, RulesValid)>,
    totals: BTreeMap<[u64; 3], (Total, Time)>,
    /// Bumped by every invalidation: a ruleset read across one is not
    /// kept as lock-backed.
    generation: u64,
}

/// How long a cached ruleset is trusted.
#[derive(Debug, Clone, Copy)]
enum RulesValid {
    /// Read under the shared quota lock: until its invalidation.
    Lock,
    /// Read without it: for the validity period from this time.
    Since(Time),
}

/// Whether a rule value is well formed.
pub fn rule_valid(r: &QuotaRule) -> bool {
    (r.op == QUOTA_OP_INODE || r.op == QUOTA_OP_DATA)
        && r.rule_flags & !QUOTA_RULE_FLAG_TOTL_COUNT == 0
        && r.name_source.iter().all(|&s| s <= QUOTA_SOURCE_GID)
        && r.name_flags
            .iter()
            .all(|&f| f & !QUOTA_NAME_FLAG_SELECT == 0)
}

/// The order rules sort in: a greater key sorts higher (priority first).
/// `quota-list` lists highest first; the highest matching rule is checked.
pub fn rule_order(r: &QuotaRule) -> impl Ord {
    (
        r.prio,
        r.op,
        [
            r.name_val[0].get(),
            r.name_val[1].get(),
            r.name_val[2].get(),
        ],
        r.name_source,
        r.name_flags,
        r.limit.get(),
        r.rule_flags,
    )
}

fn same_rule(a: &QuotaRule, b: &QuotaRule) -> bool {
    let (mut a, mut b) = (*a, *b);
    a.pad = [0; 7];
    b.pad = [0; 7];
    a == b
}

fn attr_of(source: u8, at: &QuotaAttrs) -> Option<u64> {
    match source {
        QUOTA_SOURCE_PROJ => Some(at.proj),
        QUOTA_SOURCE_UID => Some(at.uid as u64),
        QUOTA_SOURCE_GID => Some(at.gid as u64),
        _ => None,
    }
}

/// Whether every selector of `r` matches `at`.
fn selects(r: &QuotaRule, at: &QuotaAttrs) -> bool {
    (0..3).all(|i| {
        if r.name_flags[i] & QUOTA_NAME_FLAG_SELECT == 0 {
            return true;
        }
        match attr_of(r.name_source[i], at) {
            Some(v) => v == r.name_val[i].get(),
            // Selecting on a literal compares nothing.
            None => true,
        }
    })
}

/// The totl name a rule checks for `at`.
fn totl_name(r: &QuotaRule, at: &QuotaAttrs) -> [u64; 3] {
    std::array::from_fn(|i| {
        if r.name_source[i] == QUOTA_SOURCE_LITERAL {
            r.name_val[i].get()
        } else {
            attr_of(r.name_source[i], at).unwrap_or(0)
        }
    })
}

/// The rule that governs `op` for `at`, if any.
pub fn governing_rule<'a>(
    rules: &'a [QuotaRule],
    op: u8,
    at: &QuotaAttrs,
) -> Option<&'a QuotaRule> {
    rules
        .iter()
        .filter(|r| r.op == op && selects(r, at))
        .max_by(|a, b| rule_order(a).cmp(&rule_order(b)))
}

/// Whether a total is over a rule's limit (negative totals count as 0).
fn over_limit(r: &QuotaRule, t: &Total) -> bool {
    let v = if r.rule_flags & QUOTA_RULE_FLAG_TOTL_COUNT != 0 {
        t.count
    } else {
        t.total
    };
    (v as i64) >= 0 && v >= r.limit.get()
}

fn age(now: Time, then: Time) -> Option<Duration> {
    let n = Duration::new(now.sec, now.nsec);
    let t = Duration::new(then.sec, then.nsec);
    n.checked_sub(t)
}

impl Fs {
    /// Gives the filesystem its stable-root reader (quota enforcement,
    /// rule and tag reads).
    pub fn set_stable_items(&self, stable: Arc<dyn StableItems>) {
        let mut q = self.quota();
        q.stable = Some(stable);
        q.rules = None;
        q.totals.clear();
    }

    /// How long rules and checked totals are trusted (default
    /// [`QUOTA_VALIDITY`]; zero re-reads at every check).
    pub fn set_quota_validity(&self, validity: Duration) {
        self.quota().validity = Some(validity);
    }

    /// Forgets the ruleset and the checked totals: the next check reads
    /// them again. The quota cluster lock's invalidation calls this.
    pub fn invalidate_quota_rules(&self) {
        let mut q = self.quota();
        q.rules = None;
        q.totals.clear();
        q.generation += 1;
    }

    /// Makes sure the ruleset is cached under the quota lock (§9: a rule
    /// change takes the lock WRITE, so every mount's READ is invalidated
    /// and its ruleset read again). Operations that may check a quota call
    /// this after their inode locks and before their transaction hold, as
    /// the global lock order wants; with cluster locks a mount then reads
    /// the rules once per rule change rather than once per validity period.
    pub(crate) async fn quota_rules_locked(&self) -> FsResult<()> {
        let (stable, generation) = {
            let q = self.quota();
            match (&q.stable, &q.rules) {
                (None, _) | (_, Some((_, RulesValid::Lock))) => return Ok(()),
                (Some(s), _) => (s.clone(), q.generation),
            }
        };
        if !self.locks.shared() {
            return Ok(());
        }
        let _read = self.locks.lock(quota_lock(), LockMode::Read).await?;
        let rules = self.read_rules(&*stable).await?;
        let mut q = self.quota();
        if q.generation == generation {
            q.rules = Some((rules, RulesValid::Lock));
        }
        Ok(())
    }

    fn quota(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.quota.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stable(&self) -> FsResult<Arc<dyn StableItems>> {
        self.quota().stable.clone().ok_or(libc::EOPNOTSUPP)
    }

    fn fresh(&self, then: Time) -> bool {
        let validity = self.quota().validity.unwrap_or(QUOTA_VALIDITY);
        age(self.now(), then).is_some_and(|a| a < validity)
    }

    /// Every committed rule, in key order.
    pub async fn quota_rules(&self) -> FsResult<Vec<QuotaRule>> {
        let stable = self.stable()?;
        let mut out = Vec::new();
        for (_, r) in rule_items(&*stable).await? {
            out.push(r);
        }
        Ok(out)
    }

    /// Adds a rule (EEXIST if it is there, EINVAL if malformed).
    pub async fn quota_add(&self, rule: &QuotaRule) -> FsResult<()> {
        if !rule_valid(rule) {
            return Err(libc::EINVAL);
        }
        let stable = self.stable()?;
        let mut rule = *rule;
        rule.pad = [0; 7];
        let hash = rule.rule_hash();
        // Our own uncommitted rule changes must be seen by the read.
        self.trans.sync().await?;
        let _op = self.op_lock.lock().await;
        // Every mount's READ goes, and with it their cached rulesets.
        let _quota = self.locks.lock(quota_lock(), LockMode::Write).await?;
        let existing = rules_at(&*stable, hash).await?;
        let mut nr = 0;
        for (k, r) in &existing {
            if same_rule(r, &rule) {
                return Err(libc::EEXIST);
            }
            if k.third == nr {
                nr += 1;
            }
        }
        let hold = self.hold(true).await?;
        self.items
            .create_force(quota_rule_key(hash, nr), rule.as_bytes().to_vec())
            .await?;
        drop(hold);
        drop(_quota);
        drop(_op);
        // Committed at once, so every mount sees the change.
        self.trans.sync().await?;
        self.invalidate_quota_rules();
        Ok(())
    }

    /// Deletes a rule (ENOENT if it is not there).
    pub async fn quota_del(&self, rule: &QuotaRule) -> FsResult<()> {
        let stable = self.stable()?;
        let hash = rule.rule_hash();
        // Our own uncommitted rule changes must be seen by the read.
        self.trans.sync().await?;
        let _op = self.op_lock.lock().await;
        // Every mount's READ goes, and with it their cached rulesets.
        let _quota = self.locks.lock(quota_lock(), LockMode::Write).await?;
        let existing = rules_at(&*stable, hash).await?;
        let mut found = None;
        for (k, r) in &existing {
            if same_rule(r, rule) {
                found = Some(*k);
            }
        }
        let key = found.ok_or(libc::ENOENT)?;
        let hold = self.hold(false).await?;
        self.items.delete_force(key).await?;
        drop(hold);
        drop(_quota);
        drop(_op);
        // Committed at once, so every mount sees the change.
        self.trans.sync().await?;
        self.invalidate_quota_rules();
        Ok(())
    }

    /// Deletes every rule; returns how many.
    pub async fn quota_wipe(&self) -> FsResult<usize> {
        let stable = self.stable()?;
        self.trans.sync().await?;
        let _op = self.op_lock.lock().await;
        // Every mount's READ goes, and with it their cached rulesets.
        let _quota = self.locks.lock(quota_lock(), LockMode::Write).await?;
        let all = rule_items(&*stable).await?;
        let hold = self.hold(false).await?;
        for (k, _) in &all {
            self.items.delete_force(*k).await?;
        }
        drop(hold);
        drop(_quota);
        drop(_op);
        // Committed at once, so every mount sees the change.
        self.trans.sync().await?;
        self.invalidate_quota_rules();
        Ok(all.len())
    }

    /// The ruleset: cached under the quota lock, or read again when older
    /// than the validity period.
    async fn ruleset(&self, stable: &dyn StableItems) -> FsResult<Vec<QuotaRule>> {
        let cached = self.quota().rules.clone();
        match cached {
            Some((rules, RulesValid::Lock)) => return Ok(rules),
            Some((rules, RulesValid::Since(at))) if self.fresh(at) => return Ok(rules),
            _ => {}
        }
        let now = self.now();
        let generation = self.quota().generation;
        let rules = self.read_rules(stable).await?;
        let mut q = self.quota();
        if q.generation == generation {
            q.rules = Some((rules.clone(), RulesValid::Since(now)));
        }
        Ok(rules)
    }

    async fn read_rules(&self, stable: &dyn StableItems) -> FsResult<Vec<QuotaRule>> {
        self.tag_counters
            .quota_rule_reads
            .fetch_add(1, Ordering::Relaxed);
        Ok(rule_items(stable)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .filter(rule_valid)
            .collect())
    }

    async fn checked_total(&self, stable: &dyn StableItems, name: [u64; 3]) -> FsResult<Total> {
        let cached = self.quota().totals.get(&name).copied();
        if let Some((t, at)) = cached {
            if self.fresh(at) {
                return Ok(t);
            }
        }
        let now = self.now();
        let t = stable
            .totals(name, 1)
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .unwrap_or(Total {
                name,
                total: 0,
                count: 0,
            });
        self.quota().totals.insert(name, (t, now));
        Ok(t)
    }

    /// EDQUOT when the rule governing `op` for `at` is at its limit.
    pub(crate) async fn quota_check(&self, op: u8, at: &QuotaAttrs) -> FsResult<()> {
        let Ok(stable) = self.stable() else {
            return Ok(());
        };
        self.tag_counters
            .quota_checks
            .fetch_add(1, Ordering::Relaxed);
        let rules = self.ruleset(&*stable).await?;
        let Some(rule) = governing_rule(&rules, op, at) else {
            return Ok(());
        };
        let t = self.checked_total(&*stable, totl_name(rule, at)).await?;
        if over_limit(rule, &t) {
            self.count_edquot();
            return Err(libc::EDQUOT);
        }
        Ok(())
    }

    fn count_edquot(&self) {
        self.tag_counters
            .quota_edquot
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The inode-creation check for a new inode of `ctx` in directory
    /// `parent` (its gid and project as [`Fs`] gives them to new inodes).
    pub(crate) async fn quota_check_create(&self, ctx: &Ctx, parent: &Inode) -> FsResult<()> {
        let gid = if parent.mode.get() & S_ISGID != 0 {
            parent.gid.get()
        } else {
            ctx.gid
        };
        let proj = if self.fmt_vers >= FORMAT_VERSION_V2 {
            parent.proj.get()
        } else {
            0
        };
        let at = QuotaAttrs {
            uid: ctx.uid,
            gid,
            proj,
        };
        self.quota_check(QUOTA_OP_INODE, &at).await
    }

    /// The data-allocation check for writing blocks `first..=last` of
    /// `ino` (attributes `at`): only when some block there has no written
    /// storage yet.
    pub(crate) async fn quota_check_write(
        &self,
        ino: u64,
        at: &QuotaAttrs,
        first: u64,
        last: u64,
    ) -> FsResult<()> {
        if self.quota().stable.is_none() {
            return Ok(());
        }
        let mut b = first;
        let mut allocates = false;
        while b <= last {
            match self.extent_at_or_after(ino, b).await? {
                Some(e) if e.start <= b && e.blkno != 0 => {
                    if e.last() >= last {
                        break;
                    }
                    b = e.last() + 1;
                }
                _ => {
                    allocates = true;
                    break;
                }
            }
        }
        if allocates {
            self.quota_check(QUOTA_OP_DATA, at).await?;
        }
        Ok(())
    }

    /// Up to `max` `.totl.` totals at or after `from`, from committed
    /// state (the READ_XATTR_TOTALS ioctl).
    pub async fn read_xattr_totals(&self, from: [u64; 3], max: usize) -> FsResult<Vec<Total>> {
        let stable = self.stable()?;
        let out = stable.totals(from, max).await?;
        self.tag_counters.totl_reads.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Inodes that may carry the `.srch.` xattr `name`, from `first_ino`
    /// to `last_ino`, from committed state (the SEARCH_XATTRS ioctl, §8.3):
    /// hash collisions and removals not yet committed are included; the
    /// caller checks. `done` is false when the search stopped early at its
    /// tracking limit: continue after the last inode. A name without the
    /// `.srch.` tag is EINVAL.
    pub async fn search_xattrs(
        &self,
        name: &[u8],
        first_ino: u64,
        last_ino: u64,
        limit: usize,
    ) -> FsResult<crate::srch::search::Found> {
        match super::xattr::parse_tags(name) {
            Ok((tags, _)) if tags.srch => {}
            _ => return Err(libc::EINVAL),
        }
        let stable = self.stable()?;
        let hash = crate::format::hash::fnv1a64(name);
        let out = stable
            .search_xattrs(hash, first_ino, last_ino, limit)
            .await?;
        self.tag_counters
            .srch_searches
            .fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Up to `max` `.indx.` entries `(major, minor, ino)` from `first` to
    /// `last` (positions `(major, minor, ino)`), from committed state (the
    /// READ_XATTR_INDEX ioctl). One entry per tagged xattr.
    pub async fn read_xattr_index(
        &self,
        first: (u8, u64, u64),
        last: (u8, u64, u64),
        max: usize,
    ) -> FsResult<Vec<(u8, u64, u64)>> {
        let stable = self.stable()?;
        let a = indx_key(first.0, first.1, first.2, 0);
        let z = indx_key(last.0, last.1, last.2, u64::MAX);
        if a > z {
            return Ok(Vec::new());
        }
        let items = stable.items(a, z, max).await?;
        self.tag_counters.indx_reads.fetch_add(1, Ordering::Relaxed);
        Ok(items
            .iter()
            .map(|(k, _)| {
                let (major, minor, ino, _) = indx_fields(k);
                (major, minor, ino)
            })
            .collect())
    }
}

/// The rule items with one rule hash (every collision number).
async fn rules_at(stable: &dyn StableItems, hash: u64) -> FsResult<Vec<(Key, QuotaRule)>> {
    stable
        .items(
            quota_rule_key(hash, 0),
            quota_rule_key(hash, u64::MAX),
            RULES_BATCH,
        )
        .await?
        .into_iter()
        .map(|(k, v)| Ok((k, QuotaRule::read_from_bytes(&v).map_err(|_| libc::EIO)?)))
        .collect()
}

/// Every rule item, in key order.
async fn rule_items(stable: &dyn StableItems) -> FsResult<Vec<(Key, QuotaRule)>> {
    let first = Key::new(zone::QUOTA, 0, QUOTA_RULE_TYPE, 0, 0, 0);
    let last = Key::new(zone::QUOTA, 0, QUOTA_RULE_TYPE, u64::MAX, u64::MAX, u8::MAX);
    let mut out = Vec::new();
    let mut from = first;
    loop {
        let batch = stable.items(from, last, RULES_BATCH).await?;
        let n = batch.len();
        for (k, v) in batch {
            let r = QuotaRule::read_from_bytes(&v).map_err(|_| libc::EIO)?;
            from = k.inc();
            out.push((k, r));
        }
        if n < RULES_BATCH || out.last().is_some_and(|(k, _)| *k == last) {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prio: u8, op: u8, vals: [(u64, u8, u8); 3], limit: u64, flags: u8) -> QuotaRule {
        QuotaRule {
            name_val: vals.map(|v| v.0.into()),
            limit: limit.into(),
            prio,
            op,
            rule_flags: flags,
            name_source: vals.map(|v| v.1),
            name_flags: vals.map(|v| v.2),
            pad: [0; 7],
        }
    }

    #[test]
    fn highest_matching_rule_governs_and_names_the_total() {
        let l = QUOTA_SOURCE_LITERAL;
        let u = QUOTA_SOURCE_UID;
        let s = QUOTA_NAME_FLAG_SELECT;
        let default = rule(10, QUOTA_OP_DATA, [(7, l, 0), (0, u, 0), (0, l, 0)], 100, 0);
        let special = rule(
            20,
            QUOTA_OP_DATA,
            [(7, l, 0), (1000, u, s), (0, l, 0)],
            500,
            0,
        );
        let inode = rule(30, QUOTA_OP_INODE, [(8, l, 0), (0, u, 0), (0, l, 0)], 5, 1);
        let rules = [default, special, inode];
        let a = QuotaAttrs {
            uid: 1000,
            gid: 5,
            proj: 0,
        };
        let b = QuotaAttrs { uid: 42, ..a };
        assert_eq!(governing_rule(&rules, QUOTA_OP_DATA, &a), Some(&special));
        assert_eq!(governing_rule(&rules, QUOTA_OP_DATA, &b), Some(&default));
        assert_eq!(totl_name(&default, &b), [7, 42, 0]);
        assert_eq!(governing_rule(&rules, QUOTA_OP_INODE, &b), Some(&inode));
        let t = |total, count| Total {
            name: [0; 3],
            total,
            count,
        };
        assert!(!over_limit(&default, &t(99, 1000)));
        assert!(over_limit(&default, &t(100, 0)));
        assert!(!over_limit(&default, &t(u64::MAX, 0)), "negative is 0");
        assert!(over_limit(&inode, &t(0, 5)));
        assert!(!over_limit(&inode, &t(1000, 4)));
    }
}
