//! Rate control: a pacer (token bucket with microsecond resolution) and the rate controllers
//! behind a trait and a factory.
//!
//! The controller decides *how fast*; the pacer enforces it, packet by packet, always within the
//! session's `[min_rate, target_rate]` limits.

use std::fmt;
use std::time::{Duration, Instant};

/// Rate limits of a session in bits per second (`-l` target, `-m` minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// The rate never exceeded (`-l`).
    pub target: u64,
    /// The rate never gone below, whatever the controller says (`-m`).
    pub min: u64,
}

impl RateLimits {
    /// Clamps `rate` into the limits.
    pub fn clamp(&self, rate: u64) -> u64 {
        rate.clamp(self.min.min(self.target), self.target)
    }
}

/// What the sender learned from one feedback packet.
#[derive(Debug, Clone, Copy)]
pub struct RateSample {
    /// When the feedback arrived.
    pub now: Instant,
    /// This feedback's RTT sample (send of the echoed packet to arrival of the feedback, minus
    /// the receiver's hold time), if it carried a usable echo.
    pub rtt: Option<Duration>,
    /// The smallest RTT seen recently: the path's propagation delay estimate.
    pub min_rtt: Duration,
    /// The smoothed RTT.
    pub srtt: Duration,
    /// Forward-path queueing delay measured by the receiver from one-way delays.
    pub queue_delay: Duration,
    /// Payload bits per second the receiver accepted since the previous feedback.
    pub delivery_rate: u64,
    /// The rate the pacer is currently sending at.
    pub sending_rate: u64,
}

/// A rate controller. It sees feedback samples and proposes a sending rate; the session clamps
/// the proposal into the user's [`RateLimits`].
pub trait Controller: Send + fmt::Debug {
    /// Takes one feedback sample into account.
    fn on_sample(&mut self, sample: &RateSample);
    /// The rate the controller wants, in bits per second.
    fn rate(&self) -> u64;
    /// Informs the controller of new limits (the user changed them mid-transfer).
    fn set_limits(&mut self, limits: RateLimits);
    /// Name for logs and benchmark tables.
    fn name(&self) -> &'static str;
}

/// Builds controllers; one per session.
pub trait ControllerFactory: Send + Sync + fmt::Debug {
    /// A fresh controller for a session with these limits.
    fn build(&self, limits: RateLimits) -> Box<dyn Controller>;
}

/// The transfer policies of the command line (`--policy`), as in `ascp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Send at the target rate regardless of congestion (never below the minimum either).
    Fixed,
    /// Adaptive, tolerating more queueing before backing off: takes a larger share.
    High,
    /// Adaptive, aiming for a small standing queue (the default).
    Fair,
    /// Adaptive with a very small queue target: yields to other traffic (scavenger).
    Low,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fixed" => Ok(Policy::Fixed),
            "high" => Ok(Policy::High),
            "fair" => Ok(Policy::Fair),
            "low" => Ok(Policy::Low),
            _ => Err(format!("unknown policy {s:?}: expected fixed, high, fair or low")),
        }
    }
}

impl Policy {
    /// The controller factory implementing this policy.
    pub fn factory(self) -> Box<dyn ControllerFactory> {
        match self {
            Policy::Fixed => Box::new(FixedFactory),
            Policy::High => Box::new(AdaptiveConfig::high()),
            Policy::Fair => Box::new(AdaptiveConfig::fair()),
            Policy::Low => Box::new(AdaptiveConfig::low()),
        }
    }
}

/// Builds [`Fixed`] controllers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedFactory;

impl ControllerFactory for FixedFactory {
    fn build(&self, limits: RateLimits) -> Box<dyn Controller> {
        Box::new(Fixed { limits })
    }
}

/// Sends at the target rate, always.
#[derive(Debug)]
pub struct Fixed {
    limits: RateLimits,
}

impl Controller for Fixed {
    fn on_sample(&mut self, _sample: &RateSample) {}
    fn rate(&self) -> u64 {
        self.limits.target
    }
    fn set_limits(&mut self, limits: RateLimits) {
        self.limits = limits;
    }
    fn name(&self) -> &'static str {
        "fixed"
    }
}

/// Parameters of the delay-based [`Adaptive`] controller.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveConfig {
    /// Standing queueing delay the controller aims for. Default (fair): 10 ms, small enough that a
    /// deep buffer stays nearly empty, large enough to be measured above jitter.
    pub queue_target: Duration,
    /// Fractional rate increase per update when the queue is empty. Default 1.0: the rate can
    /// double once per RTT while the path shows no queue, so 10 Mbit/s reaches 1 Gbit/s in
    /// about 7 RTTs.
    pub up_gain: f64,
    /// How hard the controller backs off when the queue is above target. Default 0.5.
    pub down_gain: f64,
    /// Starting rate in bits per second before any feedback (clamped into the limits).
    /// Default 10 Mbit/s.
    pub initial_rate: u64,
    /// Label for tables.
    pub name: &'static str,
}

impl AdaptiveConfig {
    /// The `fair` policy.
    pub fn fair() -> Self {
        Self {
            queue_target: Duration::from_millis(10),
            up_gain: 1.0,
            down_gain: 0.5,
            initial_rate: 10_000_000,
            name: "adaptive",
        }
    }

    /// The `high` policy: tolerates a larger standing queue.
    pub fn high() -> Self {
        Self { queue_target: Duration::from_millis(25), name: "adaptive-high", ..Self::fair() }
    }

    /// The `low` policy: a small queue target and a gentle ramp, so it yields.
    pub fn low() -> Self {
        Self {
            queue_target: Duration::from_millis(4),
            up_gain: 0.25,
            down_gain: 1.0,
            name: "adaptive-low",
            ..Self::fair()
        }
    }
}

impl ControllerFactory for AdaptiveConfig {
    fn build(&self, limits: RateLimits) -> Box<dyn Controller> {
        Box::new(Adaptive::new(*self, limits))
    }
}

/// Delay-based controller: queueing delay (RTT above the path's minimum) is the congestion
/// signal; loss is not, so random loss does not slow it down.
///
/// Once per update interval (about one smoothed RTT, at least 5 ms) it takes the smallest
/// forward-path queueing delay the receiver reported in the interval (the *standing* queue `q`,
/// which filters out jitter and self-inflicted bursts; measured one way, so congestion on the
/// feedback path does not slow the data down), and moves the rate
/// multiplicatively: up by `up_gain · (1 − q/target)` while `q` is below the target, down in
/// proportion to the excess while it is above. The equilibrium is a standing queue equal to the
/// target. The delivery rate reported by the receiver caps the rate when the queue is above target,
/// so a backlog drains within about one interval.
#[derive(Debug)]
pub struct Adaptive {
    config: AdaptiveConfig,
    limits: RateLimits,
    rate: f64,
    interval_start: Option<Instant>,
    interval_min_queue: Option<Duration>,
    interval_max_delivery: u64,
}

impl Adaptive {
    /// A controller starting at the configured initial rate.
    pub fn new(config: AdaptiveConfig, limits: RateLimits) -> Self {
        Self {
            config,
            limits,
            rate: limits.clamp(config.initial_rate) as f64,
            interval_start: None,
            interval_min_queue: None,
            interval_max_delivery: 0,
        }
    }
}

impl Controller for Adaptive {
    fn on_sample(&mut self, s: &RateSample) {
        let q = s.queue_delay;
        self.interval_min_queue = Some(self.interval_min_queue.map_or(q, |m| m.min(q)));
        self.interval_max_delivery = self.interval_max_delivery.max(s.delivery_rate);
        let start = *self.interval_start.get_or_insert(s.now);
        let interval = s.srtt.max(Duration::from_millis(5));
        if s.now.saturating_duration_since(start) < interval {
            return;
        }
        let Some(standing) = self.interval_min_queue.take() else {
            return;
        };
        let delivered = std::mem::take(&mut self.interval_max_delivery) as f64;
        self.interval_start = Some(s.now);
        let q = standing.as_secs_f64();
        let target = self.config.queue_target.as_secs_f64();
        let max = self.limits.target as f64;
        if q < target {
            let headroom = 1.0 - q / target;
            self.rate *= 1.0 + self.config.up_gain * headroom;
        } else {
            let excess = (q - target) / (q + s.min_rtt.as_secs_f64()).max(1e-6);
            self.rate *= (1.0 - self.config.down_gain * excess).max(0.5);
            if delivered > 0.0 && self.rate > delivered {
                self.rate = delivered * (1.0 - 0.5 * self.config.down_gain * excess).max(0.5);
            }
        }
        self.rate = self.rate.clamp(self.limits.min.min(self.limits.target) as f64, max);
    }

    fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn set_limits(&mut self, limits: RateLimits) {
        self.limits = limits;
        self.rate = limits.clamp(self.rate as u64) as f64;
    }

    fn name(&self) -> &'static str {
        self.config.name
    }
}

/// Token-bucket pacer with microsecond resolution.
///
/// Tokens are bytes; they accrue at the current rate up to a burst of `burst` bytes, which
/// bounds how many packets leave back to back (and so how much a batched send may carry).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate_bps: u64,
    tokens: f64,
    burst: f64,
    last: Option<Instant>,
}

/// Default pacer burst: how long a full bucket lasts at the current rate.
pub const PACER_BURST_TIME: Duration = Duration::from_micros(500);

impl Pacer {
    /// A pacer at `rate_bps` whose bucket holds at least `min_burst` bytes (e.g. two datagrams).
    pub fn new(rate_bps: u64, min_burst: usize) -> Self {
        let mut p =
            Self { rate_bps: 0, tokens: min_burst as f64, burst: min_burst as f64, last: None };
        p.set_rate(rate_bps, min_burst);
        p.tokens = p.burst;
        p
    }

    /// Changes the rate; the burst scales with it.
    pub fn set_rate(&mut self, rate_bps: u64, min_burst: usize) {
        self.rate_bps = rate_bps.max(1);
        let burst = rate_bps as f64 / 8.0 * PACER_BURST_TIME.as_secs_f64();
        self.burst = burst.max(min_burst as f64);
        self.tokens = self.tokens.min(self.burst);
    }

    /// The current rate in bits per second.
    pub fn rate(&self) -> u64 {
        self.rate_bps
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate_bps as f64 / 8.0).min(self.burst);
        }
        self.last = Some(now);
    }

    /// When a packet of `len` bytes may leave: `now` if the bucket holds enough tokens.
    pub fn ready_at(&mut self, now: Instant, len: usize) -> Instant {
        self.refill(now);
        let missing = len as f64 - self.tokens;
        if missing <= 0.0 {
            return now;
        }
        let wait_us = (missing * 8.0 / self.rate_bps as f64 * 1e6).ceil() as u64;
        now + Duration::from_micros(wait_us.max(1))
    }

    /// Takes the tokens of a packet that was just sent.
    pub fn consume(&mut self, now: Instant, len: usize) {
        self.refill(now);
        self.tokens -= len as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_holds_its_rate_over_a_second() {
        let start = Instant::now();
        let mut p = Pacer::new(100_000_000, 3000);
        let mut now = start;
        let mut sent = 0usize;
        while now < start + Duration::from_secs(1) {
            let at = p.ready_at(now, 1500);
            if at > now {
                now = at;
                continue;
            }
            p.consume(now, 1500);
            sent += 1500;
        }
        let rate = sent as f64 * 8.0;
        assert!((rate - 100e6).abs() / 100e6 < 0.01, "{rate}");
    }

    #[test]
    fn fixed_ignores_feedback_and_limits_clamp() {
        let limits = RateLimits { target: 50_000_000, min: 1_000_000 };
        let mut c = Policy::Fixed.factory().build(limits);
        assert_eq!(c.rate(), 50_000_000);
        c.set_limits(RateLimits { target: 20_000_000, min: 0 });
        assert_eq!(c.rate(), 20_000_000);
        assert_eq!(limits.clamp(5), 1_000_000);
    }

    fn sample(now: Instant, rtt_ms: f64, min_ms: u64) -> RateSample {
        let rtt = Duration::from_secs_f64(rtt_ms / 1e3);
        RateSample {
            now,
            rtt: Some(rtt),
            min_rtt: Duration::from_millis(min_ms),
            srtt: Duration::from_millis(min_ms),
            queue_delay: rtt.saturating_sub(Duration::from_millis(min_ms)),
            delivery_rate: 0,
            sending_rate: 0,
        }
    }

    #[test]
    fn adaptive_ramps_on_an_empty_queue_and_backs_off_on_a_full_one() {
        let limits = RateLimits { target: 1_000_000_000, min: 0 };
        let mut c = Adaptive::new(AdaptiveConfig::fair(), limits);
        let t0 = Instant::now();
        for i in 0..=10 {
            c.on_sample(&sample(t0 + Duration::from_millis(50 * i), 50.0, 50));
        }
        assert_eq!(c.rate(), 1_000_000_000, "ten RTTs with no queue reach the target");
        let before = c.rate();
        for i in 11..=12 {
            c.on_sample(&sample(t0 + Duration::from_millis(50 * i), 150.0, 50));
        }
        assert!(c.rate() < before / 2, "a 100 ms standing queue halves the rate or more");
        let low = c.rate();
        // Random loss is not an input at all; a clean path ramps back up.
        for i in 13..=20 {
            c.on_sample(&sample(t0 + Duration::from_millis(50 * i), 50.0, 50));
        }
        assert!(c.rate() > low);
    }
}
