//! How many DATA bytes the sender had sent by a given send time. The rate controller's loss
//! estimate is what the receiver accepted (FEEDBACK `rx_bytes`) over what had been sent by the
//! packet the feedback echoes (its `echo_time_us`), so neither end needs a loss counter on the
//! wire.

use std::collections::VecDeque;

/// Sends within this many microseconds share one entry: an answer may count up to this much
/// later sending (at 10 Gbit/s, 125 KB; a controller interval is at least 5 ms).
const GRAIN_US: u64 = 100;
/// Entries kept at most (10,000 a second while sending: 6.5 s of feedback silence). Older ones
/// go first; an echo older than every entry has no answer.
const MAX_ENTRIES: usize = 1 << 16;

/// Cumulative DATA bytes by send time, from the oldest time a feedback may still echo.
#[derive(Debug, Default)]
pub(crate) struct SendLog {
    /// (start of the grain in microseconds since the session began, bytes sent by its end).
    entries: VecDeque<(u64, u64)>,
    total: u64,
}

impl SendLog {
    /// `bytes` of DATA sent at `at_us` (never earlier than the last call's).
    pub(crate) fn record(&mut self, at_us: u64, bytes: u64) {
        self.total += bytes;
        match self.entries.back_mut() {
            Some((t, cum)) if at_us < *t + GRAIN_US => *cum = self.total,
            _ => {
                if self.entries.len() == MAX_ENTRIES {
                    self.entries.pop_front();
                }
                self.entries.push_back((at_us, self.total));
            }
        }
    }

    /// Bytes sent by the packet sent at `at_us` (counting at most [`GRAIN_US`] of later
    /// sending), or `None` if that is older than every entry. Entries older than the answer's are
    /// dropped: echoes only move forward (the sender reads the newest feedback only).
    pub(crate) fn sent_by(&mut self, at_us: u64) -> Option<u64> {
        let i = self.entries.partition_point(|&(t, _)| t <= at_us);
        if i == 0 {
            return None;
        }
        self.entries.drain(..i - 1);
        Some(self.entries[0].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_send_time_and_forgets_what_is_behind() {
        let mut log = SendLog::default();
        for i in 0..1000u64 {
            log.record(i * 10, 1000);
        }
        // Grains of 100 us: the packet sent at 355 us is in the grain [300, 400), which ends
        // with the packet sent at 390 us (the 40th).
        assert_eq!(log.sent_by(355), Some(40_000));
        assert_eq!(log.sent_by(9_990), Some(1_000_000));
        // Behind the last answer: gone.
        assert_eq!(log.sent_by(100), None);
        assert_eq!(log.entries.len(), 1);
    }

    #[test]
    fn stays_bounded_without_feedback() {
        let mut log = SendLog::default();
        for i in 0..(MAX_ENTRIES as u64 * 3) {
            log.record(i * GRAIN_US, 1);
        }
        assert_eq!(log.entries.len(), MAX_ENTRIES);
        assert_eq!(log.sent_by(0), None);
    }
}
