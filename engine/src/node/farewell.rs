//! Which unmounting mounts the server may let go (reference §5.4).
//!
//! A mount that is not a quorum member leaves as soon as it is reclaimed.
//! A quorum member leaves only while more than `votes_needed` quorum
//! members are mounted (counting itself), so that enough remain to elect
//! a server for everyone still mounted; or when every mount left is a
//! quorum member asking to leave, so a whole cluster can still unmount.
//!
//! Pure: the network side ([`super::serve`]) reads the mounted clients
//! from the super, asks here, and runs the FAREWELL handler of each rid
//! returned.

use std::collections::BTreeSet;

/// A mount recorded in the super's mounted_clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mounted {
    pub rid: u64,
    pub quorum: bool,
}

/// The rids of `asking` that may be answered now, in rid order. A rid no
/// longer mounted (reclaimed meanwhile) is answered too: its farewell
/// finds nothing left to do.
pub fn may_leave(mounted: &[Mounted], asking: &BTreeSet<u64>, votes_needed: usize) -> Vec<u64> {
    let is_mounted = |rid: u64| mounted.iter().any(|m| m.rid == rid);
    let mut go: Vec<u64> = asking.iter().copied().filter(|r| !is_mounted(*r)).collect();
    let (members, clients): (Vec<&Mounted>, Vec<&Mounted>) = mounted.iter().partition(|m| m.quorum);
    go.extend(clients.iter().map(|m| m.rid).filter(|r| asking.contains(r)));
    let leaving: Vec<u64> = members
        .iter()
        .map(|m| m.rid)
        .filter(|r| asking.contains(r))
        .collect();
    if mounted.iter().all(|m| m.quorum && asking.contains(&m.rid)) {
        // Everyone left is a quorum member on its way out: all go.
        go.extend(leaving);
    } else {
        let mut remaining = members.len();
        for rid in leaving {
            if remaining > votes_needed {
                go.push(rid);
                remaining -= 1;
            }
        }
    }
    go.sort_unstable();
    go
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rid: u64, quorum: bool) -> Mounted {
        Mounted { rid, quorum }
    }

    fn set(r: &[u64]) -> BTreeSet<u64> {
        r.iter().copied().collect()
    }

    #[test]
    fn clients_leave_at_once() {
        let mounted = [m(1, true), m(2, false), m(3, false)];
        assert_eq!(may_leave(&mounted, &set(&[2, 3]), 1), vec![2, 3]);
    }

    #[test]
    fn last_member_waits_for_clients() {
        let mounted = [m(1, true), m(2, false)];
        assert!(may_leave(&mounted, &set(&[1]), 1).is_empty());
        // Once the client left too, the member goes.
        assert_eq!(may_leave(&[m(1, true)], &set(&[1]), 1), vec![1]);
    }

    #[test]
    fn members_leave_while_enough_remain() {
        // Three slots, two votes needed: one of three may go, the
        // second must wait while a client is mounted.
        let mounted = [m(1, true), m(2, true), m(3, true), m(4, false)];
        assert_eq!(may_leave(&mounted, &set(&[1, 2]), 2), vec![1]);
        let mounted = [m(2, true), m(3, true), m(4, false)];
        assert!(may_leave(&mounted, &set(&[2]), 2).is_empty());
    }

    #[test]
    fn a_cluster_of_members_all_leaving_goes_together() {
        let mounted = [m(1, true), m(2, true), m(3, true)];
        assert_eq!(may_leave(&mounted, &set(&[1, 2, 3]), 2), vec![1, 2, 3]);
        // Not while one member stays.
        assert_eq!(may_leave(&mounted, &set(&[1, 2]), 2), vec![1]);
    }

    #[test]
    fn a_reclaimed_asker_is_answered() {
        let mounted = [m(1, true), m(2, false)];
        assert_eq!(may_leave(&mounted, &set(&[7]), 1), vec![7]);
    }

    #[test]
    fn two_slot_volume() {
        // One vote needed: of two members one may leave while a client
        // stays, the other waits.
        let mounted = [m(1, true), m(2, true), m(3, false)];
        assert_eq!(may_leave(&mounted, &set(&[1, 2]), 1), vec![1]);
    }
}
