//! Sliding replay window over packet numbers (RFC 4303 section 3.4.3 style).

/// Window width in packet numbers. Packets older than this relative to the highest packet number
/// seen are dropped; at 1 Mpps that is 8 ms of reordering, and a block whose packet is dropped as
/// too old is simply requested again.
pub const REPLAY_WINDOW: u64 = 8192;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// What the replay window says about a packet number (before authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayCheck {
    /// Not seen and inside the window: authenticate it, then [`ReplayWindow::commit`].
    Fresh,
    /// Already received.
    Duplicate,
    /// Older than the window.
    TooOld,
}

/// Remembers which of the most recent [`REPLAY_WINDOW`] packet numbers were received.
///
/// Checking and recording are separate steps so that only authenticated packets move the window:
/// a forged packet number cannot shift it.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the highest packet number committed (0 = none yet).
    next: u64,
    bits: [u64; WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow").field("next", &self.next).finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { next: 0, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// The highest packet number committed so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Classifies `pn` without changing the window.
    pub fn check(&self, pn: u64) -> ReplayCheck {
        if pn >= self.next {
            return ReplayCheck::Fresh;
        }
        if self.next - pn > REPLAY_WINDOW {
            return ReplayCheck::TooOld;
        }
        if self.bit(pn) { ReplayCheck::Duplicate } else { ReplayCheck::Fresh }
    }

    /// Records an authenticated packet number. Call only after [`check`](Self::check) said
    /// [`ReplayCheck::Fresh`] and the packet authenticated.
    pub fn commit(&mut self, pn: u64) {
        if pn >= self.next {
            let advance = pn + 1 - self.next;
            if advance >= REPLAY_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for clear in self.next..=pn {
                    self.set(clear, false);
                }
            }
            self.next = pn + 1;
        }
        self.set(pn, true);
    }

    fn bit(&self, pn: u64) -> bool {
        let i = (pn % REPLAY_WINDOW) as usize;
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, pn: u64, on: bool) {
        let i = (pn % REPLAY_WINDOW) as usize;
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_number_once_in_any_order() {
        let mut w = ReplayWindow::default();
        for pn in [5u64, 3, 9, 4, 0, 1, 2, 8, 6, 7] {
            assert_eq!(w.check(pn), ReplayCheck::Fresh, "{pn}");
            w.commit(pn);
        }
        for pn in 0..10 {
            assert_eq!(w.check(pn), ReplayCheck::Duplicate, "{pn}");
        }
        assert_eq!(w.highest(), Some(9));
    }

    #[test]
    fn old_numbers_fall_out_and_big_jumps_clear() {
        let mut w = ReplayWindow::default();
        w.commit(1);
        w.commit(REPLAY_WINDOW + 1);
        assert_eq!(w.check(1), ReplayCheck::TooOld);
        assert_eq!(w.check(2), ReplayCheck::Fresh);
        w.commit(10 * REPLAY_WINDOW);
        assert_eq!(w.check(10 * REPLAY_WINDOW - 1), ReplayCheck::Fresh);
        assert_eq!(w.check(10 * REPLAY_WINDOW), ReplayCheck::Duplicate);
        // Numbers that alias to the same bit in the old window are fresh again.
        assert_eq!(w.check(9 * REPLAY_WINDOW + 1), ReplayCheck::Fresh);
    }
}
