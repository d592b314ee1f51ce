//! The receiver's missing blocks: disjoint half-open ranges, each with the time at which it is
//! next due to be requested from the sender.

use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Gap {
    end: u64,
    due: Instant,
    detected: Instant,
    requested: bool,
}

/// What was known about a missing block when it arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filled {
    /// When the receiver noticed the block was missing.
    pub detected: Instant,
    /// Whether the receiver had already asked for it.
    pub requested: bool,
}

/// Missing block ranges below the receiver's known end.
#[derive(Debug, Default)]
pub(crate) struct Gaps {
    map: BTreeMap<u64, Gap>,
    /// No gap is due before this (it may be earlier than the true earliest: then a scan finds
    /// nothing and recomputes it).
    earliest: Option<Instant>,
    blocks: u64,
    requested: u64,
}

impl Gaps {
    /// Adds `[start, end)` as missing since `now`, first due at `due`. The range must not
    /// overlap a gap.
    pub fn add(&mut self, start: u64, end: u64, now: Instant, due: Instant) {
        if start >= end {
            return;
        }
        self.map.insert(start, Gap { end, due, detected: now, requested: false });
        self.blocks += end - start;
        self.earliest = Some(self.earliest.map_or(due, |e| e.min(due)));
    }

    /// Total missing blocks.
    #[cfg(test)]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Missing blocks that have been requested at least once (they are on their way).
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// The lowest missing block, if any.
    pub fn first(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    pub fn contains(&self, block: u64) -> bool {
        self.map.range(..=block).next_back().is_some_and(|(_, g)| block < g.end)
    }

    /// Marks `block` as no longer missing. Returns `None` if it was not missing.
    pub fn remove(&mut self, block: u64) -> Option<Filled> {
        let (&start, &gap) = self.map.range(..=block).next_back()?;
        if block >= gap.end {
            return None;
        }
        self.map.remove(&start);
        if start < block {
            self.map.insert(start, Gap { end: block, ..gap });
        }
        if block + 1 < gap.end {
            self.map.insert(block + 1, gap);
        }
        self.blocks -= 1;
        if gap.requested {
            self.requested -= 1;
        }
        Some(Filled { detected: gap.detected, requested: gap.requested })
    }

    /// Marks every block in `[start, end)` as no longer missing (a file the session gave up).
    pub fn remove_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut hit: Vec<(u64, Gap)> = Vec::new();
        if let Some((&s, &g)) = self.map.range(..start).next_back()
            && g.end > start
        {
            hit.push((s, g));
        }
        hit.extend(self.map.range(start..end).map(|(&s, &g)| (s, g)));
        for (s, g) in hit {
            self.map.remove(&s);
            let removed = g.end.min(end) - s.max(start);
            self.blocks -= removed;
            if g.requested {
                self.requested -= removed;
            }
            if s < start {
                self.map.insert(s, Gap { end: start, ..g });
            }
            if g.end > end {
                self.map.insert(end, g);
            }
        }
    }

    /// When the next gap falls due.
    pub fn next_due(&self) -> Option<Instant> {
        if self.map.is_empty() { None } else { self.earliest }
    }

    /// Collects ranges due at `now`, up to `budget` blocks in total, calling `emit(start, end)`
    /// for each (in ascending order) until it returns false (the packet is full). Emitted ranges
    /// next fall due at `next_due`.
    pub fn take_due(
        &mut self,
        now: Instant,
        mut budget: u64,
        next_due: Instant,
        mut emit: impl FnMut(u64, u64) -> bool,
    ) {
        let mut earliest: Option<Instant> = None;
        let mut splits = Vec::new();
        let mut full = false;
        for (&start, gap) in self.map.iter_mut() {
            if !full && gap.due <= now && budget > 0 {
                let end = gap.end.min(start.saturating_add(budget));
                if emit(start, end) {
                    budget -= end - start;
                    if end < gap.end {
                        splits.push((end, *gap));
                        gap.end = end;
                    }
                    gap.due = next_due;
                    if !gap.requested {
                        self.requested += end - start;
                        gap.requested = true;
                    }
                } else {
                    full = true;
                }
            }
            earliest = Some(earliest.map_or(gap.due, |e| e.min(gap.due)));
        }
        for (start, gap) in splits {
            earliest = Some(earliest.map_or(gap.due, |e| e.min(gap.due)));
            self.map.insert(start, gap);
        }
        self.earliest = earliest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn removal_splits_and_due_ranges_respect_budget() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.add(10, 20, t, t);
        g.add(30, 31, t, t + Duration::from_secs(1));
        assert!(g.remove(15).is_some_and(|f| !f.requested));
        assert!(g.remove(15).is_none());
        assert!(g.remove(25).is_none());
        assert_eq!(g.blocks(), 10);
        assert!(g.contains(14) && g.contains(16) && !g.contains(15) && !g.contains(20));
        let mut got = Vec::new();
        let later = t + Duration::from_millis(5);
        g.take_due(t, 7, later, |s, e| {
            got.push((s, e));
            true
        });
        assert_eq!(got, vec![(10, 15), (16, 18)]);
        // What was left of the second range is still due now; the rest waits.
        got.clear();
        g.take_due(t, 100, later, |s, e| {
            got.push((s, e));
            true
        });
        assert_eq!(got, vec![(18, 20)]);
        assert!(g.remove(19).is_some_and(|f| f.requested && f.detected == t));
        assert_eq!(g.next_due(), Some(later));
        assert_eq!(g.first(), Some(10));
    }

    #[test]
    fn range_removal_keeps_counts() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.add(0, 10, t, t);
        g.add(20, 30, t, t);
        g.take_due(t, 100, t, |_, _| true);
        assert_eq!(g.requested(), 20);
        g.remove_range(5, 25);
        assert_eq!((g.blocks(), g.requested()), (10, 10));
        assert!(g.contains(4) && !g.contains(5) && !g.contains(24) && g.contains(25));
        g.remove_range(0, 100);
        assert_eq!((g.blocks(), g.requested(), g.first()), (0, 0, None));
    }
}
