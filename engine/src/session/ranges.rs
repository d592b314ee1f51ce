//! A set of disjoint, non-adjacent half-open `u64` ranges (the sender's retransmission queue).

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet {
    map: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of values in the set.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Adds `[start, end)`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Absorb a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return;
            }
            start = s;
            self.len -= e - s;
            self.map.remove(&s);
        }
        // Absorb ranges starting inside `[start, end]`.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            self.len -= e - s;
            end = end.max(e);
        }
        self.len += end - start;
        self.map.insert(start, end);
    }

    /// The lowest value.
    pub fn first(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    /// Removes and returns the lowest value.
    pub fn pop_first(&mut self) -> Option<u64> {
        let (s, e) = self.map.pop_first()?;
        if s + 1 < e {
            self.map.insert(s + 1, e);
        }
        self.len -= 1;
        Some(s)
    }

    /// Removes every value below `bound`.
    pub fn remove_below(&mut self, bound: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= bound {
                break;
            }
            self.map.remove(&s);
            self.len -= e - s;
            if e > bound {
                self.map.insert(bound, e);
                self.len += e - bound;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlaps_and_pops_in_order() {
        let mut r = RangeSet::default();
        r.insert(10, 12);
        r.insert(20, 25);
        r.insert(11, 21);
        assert_eq!(r.len(), 15);
        r.insert(0, 2);
        r.insert(2, 3);
        assert_eq!(r.len(), 18);
        r.remove_below(11);
        assert_eq!(r.first(), Some(11));
        assert_eq!(r.len(), 14);
        let all: Vec<u64> = std::iter::from_fn(|| r.pop_first()).collect();
        assert_eq!(all, (11..25).collect::<Vec<_>>());
        assert!(r.is_empty());
    }
}
