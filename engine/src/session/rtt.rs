//! Round-trip time estimation (RFC 6298 smoothing plus a windowed minimum).

use std::time::{Duration, Instant};

/// The minimum RTT is the minimum over the current and the previous window of this length, so a
/// route change that lengthens the path is noticed within two windows.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_current: Option<Duration>,
    min_previous: Option<Duration>,
    window_start: Option<Instant>,
}

impl RttEstimator {
    pub fn new() -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            min_current: None,
            min_previous: None,
            window_start: None,
        }
    }

    pub fn update(&mut self, now: Instant, sample: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= MIN_RTT_WINDOW {
            self.min_previous = self.min_current.take();
            self.window_start = Some(now);
        }
        self.min_current = Some(self.min_current.map_or(sample, |m| m.min(sample)));
    }

    /// Smoothed RTT, if any sample arrived.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        match (self.min_current, self.min_previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
