//! Round-trip time estimation (RFC 6298 smoothing plus a windowed minimum).

use std::time::{Duration, Instant};

/// The minimum RTT is the minimum over the current and the previous window of this length, so a
/// route change that lengthens the path is noticed within two windows.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// The smallest value seen over the current and the previous window of a fixed length (a new
/// window begins with the first value at least that long after the current one began): a path's
/// base delay that follows a route change within two windows. Used for the sender's minimum RTT
/// and the receiver's base one-way delay.
#[derive(Debug, Clone)]
pub(crate) struct WindowedMin<T> {
    window: Duration,
    current: Option<T>,
    previous: Option<T>,
    start: Option<Instant>,
}

impl<T: Ord + Copy> WindowedMin<T> {
    pub fn new(window: Duration) -> Self {
        Self { window, current: None, previous: None, start: None }
    }

    pub fn update(&mut self, now: Instant, value: T) {
        let start = *self.start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.window {
            self.previous = self.current.take();
            self.start = Some(now);
        }
        self.current = Some(self.current.map_or(value, |m| m.min(value)));
    }

    pub fn get(&self) -> Option<T> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: WindowedMin<Duration>,
}

impl RttEstimator {
    pub fn new() -> Self {
        Self { srtt: None, rttvar: Duration::ZERO, min: WindowedMin::new(MIN_RTT_WINDOW) }
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
        self.min.update(now, sample);
    }

    /// Smoothed RTT, if any sample arrived.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min.get()
    }
}
