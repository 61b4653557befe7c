//! Coverage: every block of a device's range must be claimed exactly once,
//! by a ref or as free. Gaps are leaks; overlaps name both claimants. Only
//! the first [`MAX_RANGE_FAULTS`] of each are listed, the rest counted.

use super::{Checker, FaultKind, Space, MAX_RANGE_FAULTS};

impl Checker<'_> {
    /// Sorts the claims of `space` and reports gaps (leaks) and overlaps
    /// within `lo..hi`, and claims outside it.
    pub(super) fn coverage(&mut self, space: Space, lo: u64, hi: u64) {
        let (mut claims, what) = match space {
            Space::Meta => (std::mem::take(&mut self.meta_claims), "meta"),
            Space::Data => (std::mem::take(&mut self.data_claims), "data"),
        };
        claims.sort_by_key(|c| (c.start, c.len));
        let mut cur = lo;
        let mut last_who: Option<u32> = None;
        let (mut leaks, mut dups) = (0usize, 0usize);
        let mut out: Vec<(FaultKind, String, String)> = Vec::new();
        for c in &claims {
            let end = c.start.saturating_add(c.len);
            if c.start < lo || end > hi {
                out.push((
                    FaultKind::OutOfRange,
                    self.names[c.who as usize].clone(),
                    format!("{what} blocks {}..{end} outside {lo}..{hi}", c.start),
                ));
                continue;
            }
            if c.start > cur {
                leaks += 1;
                if leaks <= MAX_RANGE_FAULTS {
                    out.push((
                        FaultKind::Leak,
                        String::new(),
                        format!(
                            "{what} blocks {cur}..{} are neither referenced nor free (leaked)",
                            c.start
                        ),
                    ));
                }
            } else if c.start < cur {
                dups += 1;
                if dups <= MAX_RANGE_FAULTS {
                    let prev = last_who
                        .map(|w| self.names[w as usize].clone())
                        .unwrap_or_default();
                    out.push((
                        FaultKind::Overlap,
                        String::new(),
                        format!(
                            "{what} blocks {}..{} claimed by {} and also by {prev}",
                            c.start,
                            cur.min(end),
                            self.names[c.who as usize]
                        ),
                    ));
                }
            }
            if end > cur {
                cur = end;
                last_who = Some(c.who);
            }
        }
        if cur < hi {
            leaks += 1;
            out.push((
                FaultKind::Leak,
                String::new(),
                format!("{what} blocks {cur}..{hi} are neither referenced nor free (leaked)"),
            ));
        }
        if leaks > MAX_RANGE_FAULTS {
            out.push((
                FaultKind::Leak,
                String::new(),
                format!("{} more leaked {what} ranges", leaks - MAX_RANGE_FAULTS),
            ));
        }
        if dups > MAX_RANGE_FAULTS {
            out.push((
                FaultKind::Overlap,
                String::new(),
                format!(
                    "{} more doubly claimed {what} ranges",
                    dups - MAX_RANGE_FAULTS
                ),
            ));
        }
        for (kind, path, msg) in out {
            self.fault(kind, path, msg);
        }
    }
}
