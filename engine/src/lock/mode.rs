//! Lock modes and the two compatibility relations of reference §4.1.
//!
//! There are two questions and they have different answers, which is why
//! both live here side by side:
//! * *Local use* ([`LockMode::covers`]): may a mount that was granted `G`
//!   serve a local caller asking for `M` without talking to the server?
//! * *Server compatibility* ([`compatible`]): may the server grant a queued
//!   request while another grant exists? Requests from the *same* client
//!   follow stricter rules, because a client converting its own grant (for
//!   example WRITE to WRITE_ONLY, or any request for NULL from the LRU
//!   shrinker) must first write back and drop what it cached under the old
//!   mode, and the server forces that by invalidating the client's own grant.
//!
//! Modes are not totally ordered (WRITE_ONLY is neither above nor below
//! READ), so nothing here compares modes numerically.

use crate::format::net::{LOCK_MODE_NULL, LOCK_MODE_READ, LOCK_MODE_WRITE, LOCK_MODE_WRITE_ONLY};

/// A cluster lock mode, numbered as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LockMode {
    Null = LOCK_MODE_NULL,
    Read = LOCK_MODE_READ,
    Write = LOCK_MODE_WRITE,
    /// Blind writes only (`*_force` operations: seq index items, orphans,
    /// totl deltas, indx items); the holder may not read the cache.
    WriteOnly = LOCK_MODE_WRITE_ONLY,
}

impl LockMode {
    pub const ALL: [LockMode; 4] = [
        LockMode::Null,
        LockMode::Read,
        LockMode::Write,
        LockMode::WriteOnly,
    ];

    /// Decodes a wire mode; 4 (INVALID) and above are refused.
    pub fn from_wire(v: u8) -> Option<LockMode> {
        LockMode::ALL.get(v as usize).copied()
    }

    pub fn to_wire(self) -> u8 {
        self as u8
    }

    /// Holders may read cached items.
    pub fn can_read(self) -> bool {
        matches!(self, LockMode::Read | LockMode::Write)
    }

    /// Holders may dirty items.
    pub fn can_write(self) -> bool {
        matches!(self, LockMode::Write | LockMode::WriteOnly)
    }

    /// A mount granted `self` serves a local request for `want`: the same
    /// mode, or READ under WRITE. NULL serves nothing: a local user always
    /// wants to read or write.
    pub fn covers(self, want: LockMode) -> bool {
        self != LockMode::Null
            && (self == want || (self == LockMode::Write && want == LockMode::Read))
    }

    /// The least mode whose conflicts include those of both: what a client
    /// reports when it may end up holding either. Unequal non-NULL modes
    /// give WRITE, which conflicts with everything.
    pub fn join(self, other: LockMode) -> LockMode {
        match (self, other) {
            (LockMode::Null, m) | (m, LockMode::Null) => m,
            (a, b) if a == b => a,
            _ => LockMode::Write,
        }
    }

    /// Every mode that conflicts with `other` (held by another client)
    /// also conflicts with `self`: a server believing `self` is safe for a
    /// client that really holds `other`.
    pub fn dominates(self, other: LockMode) -> bool {
        LockMode::ALL
            .into_iter()
            .all(|m| compatible(other, m, false) || !compatible(self, m, false))
    }

    /// What a holder of `self` is left with once it honoured an invalidation
    /// down to `target`. The server only ever asks for READ (from WRITE) or
    /// NULL, but after a failover a stale request may ask for READ from a
    /// holder of something else; anything `self` can't be narrowed to
    /// becomes NULL, which always satisfies the server.
    pub fn invalidated_to(self, target: LockMode) -> LockMode {
        if target != LockMode::Null && self.covers(target) {
            target
        } else {
            LockMode::Null
        }
    }
}

/// May the server grant `requested` while `granted` is held? `same_client`
/// when both belong to one client (§4.1): only READ+READ, WRITE_ONLY +
/// WRITE_ONLY and the cache-keeping upgrade READ → WRITE are compatible
/// then; in particular a client's request for NULL always conflicts with its
/// own grant, which is how the LRU shrinker gets its cache invalidated.
pub fn compatible(granted: LockMode, requested: LockMode, same_client: bool) -> bool {
    use LockMode::*;
    if same_client {
        return matches!(
            (granted, requested),
            (Read, Read) | (WriteOnly, WriteOnly) | (Read, Write)
        );
    }
    matches!(
        (granted, requested),
        (Null, _) | (_, Null) | (Read, Read) | (WriteOnly, WriteOnly)
    )
}

/// The mode the server invalidates a conflicting `granted` down to for
/// `requested`: READ when a WRITE holder only has to stop writing for a
/// reader (it keeps its cache), NULL otherwise.
pub fn invalidation_mode(granted: LockMode, requested: LockMode) -> LockMode {
    if granted == LockMode::Write && requested == LockMode::Read {
        LockMode::Read
    } else {
        LockMode::Null
    }
}

#[cfg(test)]
mod tests {
    use super::LockMode::*;
    use super::*;

    #[test]
    fn wire_values_match_the_reference() {
        for (m, v) in [(Null, 0), (Read, 1), (Write, 2), (WriteOnly, 3)] {
            assert_eq!(m.to_wire(), v);
            assert_eq!(LockMode::from_wire(v), Some(m));
        }
        assert_eq!(LockMode::from_wire(4), None);
        assert_eq!(LockMode::from_wire(255), None);
    }

    #[test]
    fn other_client_table_is_the_reference_table() {
        // Rows: granted; columns: requested NULL, READ, WRITE, WRITE_ONLY.
        let table = [
            (Null, [true, true, true, true]),
            (Read, [true, true, false, false]),
            (Write, [true, false, false, false]),
            (WriteOnly, [true, false, false, true]),
        ];
        for (g, row) in table {
            for (r, want) in LockMode::ALL.into_iter().zip(row) {
                assert_eq!(
                    compatible(g, r, false),
                    want,
                    "granted {g:?} requested {r:?}"
                );
                // The table is symmetric, which the simulation's safety
                // check relies on.
                assert_eq!(compatible(r, g, false), want);
            }
        }
    }

    #[test]
    fn same_client_rules() {
        let ok = [(Read, Read), (WriteOnly, WriteOnly), (Read, Write)];
        for g in [Read, Write, WriteOnly] {
            for r in LockMode::ALL {
                assert_eq!(
                    compatible(g, r, true),
                    ok.contains(&(g, r)),
                    "granted {g:?} requested {r:?}"
                );
            }
            // Shrinking: NULL always conflicts with our own grant.
            assert!(!compatible(g, Null, true));
        }
    }

    #[test]
    fn invalidation_goes_to_read_only_for_write_to_read() {
        for g in LockMode::ALL {
            for r in LockMode::ALL {
                let want = if (g, r) == (Write, Read) { Read } else { Null };
                assert_eq!(invalidation_mode(g, r), want);
            }
        }
    }

    #[test]
    fn local_use() {
        for g in LockMode::ALL {
            for m in LockMode::ALL {
                let want = g != Null && (g == m || (g, m) == (Write, Read));
                assert_eq!(g.covers(m), want, "granted {g:?} local {m:?}");
            }
        }
        assert!(Read.can_read() && Write.can_read());
        assert!(!WriteOnly.can_read() && !Null.can_read());
        assert!(Write.can_write() && WriteOnly.can_write());
        assert!(!Read.can_write() && !Null.can_write());
    }

    #[test]
    fn join_dominates_both() {
        for a in LockMode::ALL {
            for b in LockMode::ALL {
                let j = a.join(b);
                assert!(j.dominates(a) && j.dominates(b), "{a:?} join {b:?} = {j:?}");
                assert_eq!(j, b.join(a));
            }
        }
        assert_eq!(Read.join(Write), Write);
        assert_eq!(Read.join(WriteOnly), Write);
        assert_eq!(WriteOnly.join(Null), WriteOnly);
        assert!(Write.dominates(WriteOnly) && !WriteOnly.dominates(Read));
        assert!(!Read.dominates(Write) && Write.dominates(Read));
    }

    #[test]
    fn invalidated_to_never_leaves_more_than_asked() {
        for cur in LockMode::ALL {
            for target in [Null, Read] {
                let left = cur.invalidated_to(target);
                assert!(left == Null || left == target);
                assert!(left == Null || cur.covers(left));
            }
        }
        assert_eq!(Write.invalidated_to(Read), Read);
        assert_eq!(WriteOnly.invalidated_to(Read), Null);
        assert_eq!(Read.invalidated_to(Read), Read);
    }
}
