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

    /// Removes every value in `[start, end)`.
    pub fn remove_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // A range that starts before `start` and reaches into it is cut (and split if it also
        // reaches past `end`).
        if let Some((&s, &e)) = self.map.range(..start).next_back()
            && e > start
        {
            self.map.insert(s, start);
            self.len -= e - start;
            if e > end {
                self.map.insert(end, e);
                self.len += e - end;
            }
        }
        while let Some((&s, &e)) = self.map.range(start..end).next() {
            self.map.remove(&s);
            self.len -= e - s;
            if e > end {
                self.map.insert(end, e);
                self.len += e - end;
            }
        }
    }

    /// The parts of the set's ranges that lie in `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let before = self.map.range(..start).next_back().filter(|&(_, &e)| e > start);
        before
            .into_iter()
            .chain(self.map.range(start..end))
            .map(move |(&s, &e)| (s.max(start), e.min(end)))
            .filter(|(s, e)| s < e)
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        self.map.range(..=value).next_back().is_some_and(|(_, &e)| value < e)
    }

    /// The end of the range holding `value`, if one does.
    pub fn end_of(&self, value: u64) -> Option<u64> {
        self.map.range(..=value).next_back().filter(|(_, e)| value < **e).map(|(_, &e)| e)
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
    fn removes_ranges_and_lists_overlaps() {
        let mut r = RangeSet::default();
        r.insert(0, 10);
        r.insert(20, 30);
        r.insert(40, 50);
        assert_eq!(r.overlapping(5, 45).collect::<Vec<_>>(), vec![(5, 10), (20, 30), (40, 45)]);
        r.remove_range(5, 25);
        assert_eq!(r.len(), 5 + 5 + 10);
        assert!(r.contains(4) && !r.contains(5) && !r.contains(24) && r.contains(25));
        r.remove_range(42, 44);
        assert_eq!(
            r.overlapping(0, 100).collect::<Vec<_>>(),
            vec![(0, 5), (25, 30), (40, 42), (44, 50)]
        );
        r.remove_range(0, 100);
        assert!(r.is_empty());
    }

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
