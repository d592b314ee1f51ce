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

    /// Both ends' limits at once: the lower target, and the higher minimum (never above that
    /// target).
    pub fn within(&self, other: &RateLimits) -> RateLimits {
        let target = self.target.min(other.target);
        RateLimits { target, min: self.min.max(other.min).min(target) }
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
    /// Datagram bytes (whole DATA packets, the unit the pacer counts) the receiver has accepted
    /// since the session began, as it reported.
    pub delivered_bytes: u64,
    /// DATA datagram bytes the sender had sent by the packet this feedback echoes: with
    /// `delivered_bytes`, the loss rate (what was sent but never accepted).
    pub sent_bytes: u64,
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
    /// A one-line summary of the controller's state for debug logs (empty if it has none).
    fn state(&self) -> String {
        String::new()
    }
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
    /// Its code in CLIENT_HELLO (docs/PROTOCOL.md section 8.2).
    pub fn code(self) -> u8 {
        match self {
            Policy::Fixed => 0,
            Policy::High => 1,
            Policy::Fair => 2,
            Policy::Low => 3,
        }
    }

    /// The policy of a CLIENT_HELLO code, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        [Policy::Fixed, Policy::High, Policy::Fair, Policy::Low]
            .into_iter()
            .find(|p| p.code() == code)
    }

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
    /// Standing forward queueing delay the controller aims for. Default (fair): 10 ms, small
    /// enough that a deep buffer stays nearly empty, large enough to be measured above jitter.
    pub queue_target: Duration,
    /// Starting rate in bits per second before any feedback (clamped into the limits).
    /// Default 10 Mbit/s.
    pub initial_rate: u64,
    /// Whether to hold a share against traffic that keeps the queue full whatever this session
    /// does (loss-based TCP): see [`Adaptive`], "competing". `fair` and `high` do; `low` yields.
    pub compete: bool,
    /// Label for tables.
    pub name: &'static str,
}

impl AdaptiveConfig {
    /// The `fair` policy.
    pub fn fair() -> Self {
        Self {
            queue_target: Duration::from_millis(10),
            initial_rate: 10_000_000,
            compete: true,
            name: "adaptive",
        }
    }

    /// The `high` policy: tolerates a larger standing queue.
    pub fn high() -> Self {
        Self { queue_target: Duration::from_millis(25), name: "adaptive-high", ..Self::fair() }
    }

    /// The `low` policy: a small queue target, so it yields to traffic that builds queues.
    pub fn low() -> Self {
        Self {
            queue_target: Duration::from_millis(4),
            compete: false,
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

/// Intervals the bottleneck-bandwidth estimate remembers (a windowed maximum).
const BW_WINDOW: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Doubling every interval until the queue or the delivery rate says the pipe is full.
    Startup,
    /// Sending below the bandwidth estimate until the queue startup built is gone.
    Drain,
    /// Tracking the bandwidth estimate, steered by the queue.
    Steady,
}

/// Delay-based controller with a bandwidth and a loss estimate. Forward queueing delay
/// (measured by the receiver from one-way delays) is the congestion signal; loss is not, so random
/// loss does not slow it down.
///
/// Every update interval (one smoothed RTT, at least 5 ms) it measures the delivery rate over the
/// interval and keeps the maximum of the last [`BW_WINDOW`] intervals as the bottleneck bandwidth
/// `B`; the share of what was sent that never arrived over the last [`LOSS_WINDOW`] intervals as
/// the loss rate `p` (so `B / (1 − p)` is the sending rate that keeps the bottleneck as busy as
/// `B` says, wherever on the path the loss happens); and the smallest queueing delay reported in
/// the interval as the standing queue `q`.
/// - *Startup*: the sending rate doubles each interval (to at most `4·B`, since deliveries lag it
///   by an interval, and never below what it was) until a feedback reports `q` above the target
///   (checked on every feedback, not once per interval) or `B` stops growing by 25% for three
///   intervals; then *drain* at `B·clamp(1 − q/min_rtt, 0.5, 0.9)` (a queue of `q` empties in
///   about a round trip), judged by the latest report's `q`, until it is below half the target
///   (at most [`MAX_DRAIN_INTERVALS`]: a queue that outlasts it is not only this session's).
/// - *Steady*, queue at or below the target: rate `= B / (1 − p)` times a gain cycle of
///   [`PROBE_CYCLE`] intervals: one interval at `1 + g`, one at `1 − g` (which drains what the
///   probe queued), the rest at 1, where `g = target / min_rtt` within [`MIN_PROBE`]..=
///   [`MAX_PROBE`]: a probe queues at most about the target's worth of delay whatever the RTT,
///   and finds capacity that opened up by `g` per cycle. The link stays full with a small queue.
/// - *Steady*, queue above the target: the bottleneck is busy, so this interval's delivery rate
///   is the session's current capacity share; the rate is that share times
///   `1 − (q − target) / (2·min_rtt)` (at least 0.5), which drains the excess over two round
///   trips (one of them is the loop's own delay) instead of overshooting into an empty queue.
/// - *Competing* (when [`AdaptiveConfig::compete`]): if the queue is still above the target in
///   [`COMPETE_AFTER`] intervals after the session cut deeply (to at most 0.75 of what it delivered
///   when the queue rose above the target, in one step or in several small ones; a queue of this
///   session's own empties after that), the queue is not this session's: a loss-based flow keeps
///   the buffer full, and yielding further would hand it the whole link. The rate then follows a
///   base rate (on entry the largest delivery rate of the last [`COMPETE_WINDOW`] intervals,
///   i.e. what it had before yielding) in a cycle of [`COMPETE_CYCLE`] gains regardless of the
///   queue. The base grows and backs off the way CUBIC's window does (RFC 9438, counted in
///   [`COMPETE_SEGMENT`]s at the smoothed RTT): an interval that lost clearly more than the
///   path's own loss rate (the shared buffer overflowed) cuts it by [`COMPETE_BETA`], at most
///   once per [`COMPETE_BACKOFF_GAP`] intervals; in between it follows `C (t − K)³ + W_max` (or
///   the Reno-friendly line, if higher), so a loss-based competitor and this session converge on
///   equal shares; it never exceeds [`COMPETE_MAX_OVERSHOOT`] times the delivery rate. One
///   interval of the cycle is at 0.5: if the interval after it sees the queue at or below half
///   the target, the queue was this session's after all (or the competitor left) and steady
///   state resumes.
#[derive(Debug)]
pub struct Adaptive {
    config: AdaptiveConfig,
    limits: RateLimits,
    rate: f64,
    phase: Phase,
    bw: [f64; BW_WINDOW],
    bw_next: usize,
    full_bw: f64,
    full_bw_count: u32,
    /// Start of the current interval: when, bytes delivered and sent by then.
    interval: Option<(Instant, u64, u64)>,
    interval_min_queue: Option<Duration>,
    /// The queueing delay of the latest sample.
    last_queue: Duration,
    /// Bytes delivered and sent in each of the last [`LOSS_WINDOW`] intervals.
    loss: [(u64, u64); LOSS_WINDOW],
    loss_next: usize,
    /// Steady state: intervals since it began (the position in [`PROBE_CYCLE`]).
    cycle: usize,
    /// Deep cuts in a row after which the queue stayed above target.
    compete_evidence: u32,
    /// Whether the steady state has cut deeply since the queue rose above the target: to at most
    /// 0.75 of [`Adaptive::yield_from`].
    last_cut: bool,
    /// The delivery rate of the first interval of the current stretch with the queue above the
    /// target.
    yield_from: Option<f64>,
    /// Intervals spent in the drain phase.
    drain_intervals: u32,
    /// Delivery rates of the last [`COMPETE_WINDOW`] intervals, unfiltered.
    recent: [f64; COMPETE_WINDOW],
    recent_next: usize,
    /// In competing mode: its state.
    competing: Option<Competing>,
}

/// The competing mode's state: the base rate the gain cycle multiplies, grown and cut the way
/// CUBIC (RFC 9438) grows and cuts its window, so that a loss-based competitor and this session
/// converge on equal shares (the window is the base times the smoothed RTT, counted in
/// [`COMPETE_SEGMENT`]s).
#[derive(Debug, Clone, Copy)]
struct Competing {
    /// Intervals since it began.
    intervals: usize,
    /// The interval of the last backoff.
    last_backoff: usize,
    /// The rate the gain cycle multiplies, bits per second.
    base: f64,
    /// The start of the current growth epoch.
    epoch: Instant,
    /// The window before the last backoff (`W_max`), segments.
    w_max: f64,
    /// Seconds from the epoch until the window is back at `w_max` (`K`).
    k: f64,
}

impl Competing {
    fn new(base: f64, now: Instant, srtt: Duration) -> Self {
        let mut c = Self { intervals: 0, last_backoff: 0, base, epoch: now, w_max: 0.0, k: 0.0 };
        c.restart(now, srtt);
        c
    }

    fn window(rate: f64, srtt: Duration) -> f64 {
        rate * srtt.as_secs_f64().max(0.001) / (8.0 * COMPETE_SEGMENT)
    }

    /// Growth starts afresh from the current base (a plateau at it, then faster).
    fn restart(&mut self, now: Instant, srtt: Duration) {
        self.w_max = Self::window(self.base, srtt);
        self.epoch = now;
        self.k = 0.0;
    }

    /// A loss episode: the base falls by [`COMPETE_BETA`], and growth aims back at where it was.
    fn backoff(&mut self, now: Instant, srtt: Duration) {
        self.w_max = Self::window(self.base, srtt);
        self.base *= COMPETE_BETA;
        self.epoch = now;
        self.k = (self.w_max * (1.0 - COMPETE_BETA) / CUBIC_C).cbrt();
    }

    /// The base CUBIC's window function gives now: `C (t − K)³ + W_max`, or the Reno-friendly
    /// estimate if that is larger, back in bits per second at the current smoothed RTT.
    fn growth(&self, now: Instant, srtt: Duration) -> f64 {
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        let cubic = CUBIC_C * (t - self.k).powi(3) + self.w_max;
        let rtt = srtt.as_secs_f64().max(0.001);
        let reno = self.w_max * COMPETE_BETA
            + 3.0 * (1.0 - COMPETE_BETA) / (1.0 + COMPETE_BETA) * (t / rtt);
        cubic.max(reno) * 8.0 * COMPETE_SEGMENT / rtt
    }
}

/// The drain phase's rate: below the bandwidth estimate by enough to empty a queue of `q`
/// seconds within about one round trip (`1 − q / min_rtt`), between half and 90% of it.
fn drain_rate(bw: f64, q: f64, min_rtt: Duration) -> f64 {
    let min_rtt = min_rtt.max(Duration::from_millis(1)).as_secs_f64();
    bw * (1.0 - q / min_rtt).clamp(0.5, 0.9)
}

/// Intervals the loss estimate spans.
pub const LOSS_WINDOW: usize = 8;
/// Intervals of one steady-state gain cycle: a probe, its drain, then cruising.
pub const PROBE_CYCLE: usize = 8;
/// Smallest and largest probe gain above the estimate (`g` in [`Adaptive`]).
pub const MIN_PROBE: f64 = 0.02;
/// See [`MIN_PROBE`].
pub const MAX_PROBE: f64 = 0.25;
/// The highest loss rate the estimate believes: beyond it, sending harder to make up for loss
/// would mostly feed the loss.
pub const MAX_LOSS: f64 = 0.5;

/// A `compete` controller starts competing after this many deep cuts in a row (rate at most
/// 0.75 of the delivery rate) each followed by an interval whose queue was still above target.
pub const COMPETE_AFTER: u32 = 4;
/// While competing, the base rate never exceeds the delivery rate by more than this factor.
pub const COMPETE_MAX_OVERSHOOT: f64 = 1.15;
/// While competing, an interval that lost this much more than twice the path's own loss rate
/// (measured before, where no queue stood) is the shared buffer overflowing.
pub const COMPETE_LOSS_MARGIN: f64 = 0.005;
/// While competing, the base's response to an overflow: CUBIC's multiplicative decrease.
pub const COMPETE_BETA: f64 = 0.7;
/// CUBIC's growth constant `C`, segments per second cubed.
pub const CUBIC_C: f64 = 0.4;
/// The segment the competing mode counts its window in: a 1500-byte packet, as the loss-based
/// flows it shares a buffer with count theirs.
pub const COMPETE_SEGMENT: f64 = 1500.0;
/// While competing, intervals after a backoff before the next (one episode's losses reach over
/// two intervals at most).
pub const COMPETE_BACKOFF_GAP: usize = 3;
/// The drain phase ends after this many intervals even if the queue has not emptied.
pub const MAX_DRAIN_INTERVALS: u32 = 8;
/// Intervals of delivery rates remembered for the competing base: what the session had before
/// it yielded.
pub const COMPETE_WINDOW: usize = 32;
/// Rate gains over the base, one per interval, while competing; the 0.5 is the drain test,
/// judged by the queue in the interval after it (the last).
pub const COMPETE_CYCLE: [f64; 12] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0];

impl Adaptive {
    /// A controller starting at the configured initial rate.
    pub fn new(config: AdaptiveConfig, limits: RateLimits) -> Self {
        Self {
            config,
            limits,
            rate: limits.clamp(config.initial_rate) as f64,
            phase: Phase::Startup,
            bw: [0.0; BW_WINDOW],
            bw_next: 0,
            full_bw: 0.0,
            full_bw_count: 0,
            interval: None,
            interval_min_queue: None,
            last_queue: Duration::ZERO,
            loss: [(0, 0); LOSS_WINDOW],
            loss_next: 0,
            cycle: 0,
            compete_evidence: 0,
            last_cut: false,
            yield_from: None,
            drain_intervals: 0,
            recent: [0.0; COMPETE_WINDOW],
            recent_next: 0,
            competing: None,
        }
    }

    fn bandwidth(&self) -> f64 {
        self.bw.iter().copied().fold(0.0, f64::max)
    }

    /// The share of what was sent that never arrived, over the last [`LOSS_WINDOW`] intervals.
    fn loss_rate(&self) -> f64 {
        let (delivered, sent) =
            self.loss.iter().fold((0u64, 0u64), |(d, s), &(dd, ss)| (d + dd, s + ss));
        if sent == 0 {
            return 0.0;
        }
        (1.0 - delivered as f64 / sent as f64).clamp(0.0, MAX_LOSS)
    }
}

impl Controller for Adaptive {
    fn on_sample(&mut self, s: &RateSample) {
        let q = s.queue_delay;
        self.last_queue = q;
        self.interval_min_queue = Some(self.interval_min_queue.map_or(q, |m| m.min(q)));
        if self.phase == Phase::Startup && q > self.config.queue_target && self.bandwidth() > 0.0 {
            // The first sign of a queue ends startup at once, not at the end of the interval:
            // every interval of doubling past capacity adds a bandwidth-delay product of queue.
            self.phase = Phase::Drain;
            self.rate = drain_rate(self.bandwidth(), q.as_secs_f64(), s.min_rtt).max(1.0);
        }
        let (start, start_bytes, start_sent) =
            *self.interval.get_or_insert((s.now, s.delivered_bytes, s.sent_bytes));
        let length = s.now.saturating_duration_since(start);
        if length < s.srtt.max(Duration::from_millis(5)) {
            return;
        }
        let delivered_bytes = s.delivered_bytes.saturating_sub(start_bytes);
        let sent_bytes = s.sent_bytes.saturating_sub(start_sent);
        let interval_queue = self.interval_min_queue.unwrap_or_default();
        if interval_queue <= self.config.queue_target && start_sent > 0 {
            // Loss where no queue stood is the path's own (random) loss, which sending harder
            // makes up for; loss behind a standing queue may be the queue overflowing, which
            // sending harder would feed. Duplicates count as delivered, so a stretch may seem
            // to have delivered more than was sent.
            self.loss[self.loss_next] = (delivered_bytes.min(sent_bytes), sent_bytes);
            self.loss_next = (self.loss_next + 1) % LOSS_WINDOW;
        }
        let delivered = delivered_bytes as f64 * 8.0;
        let last_bw = delivered / length.as_secs_f64();
        self.bw[self.bw_next] = last_bw;
        self.recent[self.recent_next] = last_bw;
        self.recent_next = (self.recent_next + 1) % self.recent.len();
        self.bw_next = (self.bw_next + 1) % BW_WINDOW;
        self.interval = Some((s.now, s.delivered_bytes, s.sent_bytes));
        let q = self.interval_min_queue.take().unwrap_or_default().as_secs_f64();
        let target = self.config.queue_target.as_secs_f64();
        let bw = self.bandwidth();
        match self.phase {
            Phase::Startup => {
                if bw >= self.full_bw * 1.25 {
                    self.full_bw = bw;
                    self.full_bw_count = 0;
                } else {
                    self.full_bw_count += 1;
                }
                if q > target || self.full_bw_count >= 3 {
                    self.phase = Phase::Drain;
                    self.rate = drain_rate(bw, q, s.min_rtt);
                } else {
                    // Doubling the sending rate each interval while deliveries keep up (they
                    // lag it by one interval, so they show half of it); never lower than it
                    // was (the first interval may have seen only part of a flight).
                    self.rate = (2.0 * self.rate).min((4.0 * bw).max(self.rate));
                }
            }
            Phase::Drain => {
                self.drain_intervals += 1;
                // A queue that outlasts the drain is not (only) this session's: steady state
                // takes over and decides whether to compete.
                // The latest report, not the interval's smallest: the interval may have begun
                // before the queue startup built had shown up at all.
                let now_q = self.last_queue.as_secs_f64();
                if now_q <= target / 2.0 || self.drain_intervals > MAX_DRAIN_INTERVALS {
                    self.phase = Phase::Steady;
                    self.rate = bw;
                } else {
                    self.rate = drain_rate(bw, now_q, s.min_rtt);
                }
            }
            Phase::Steady => {
                if let Some(mut c) = self.competing {
                    let len = COMPETE_CYCLE.len();
                    let n = c.intervals;
                    if n > 0 && n % len == 0 && q <= target / 2.0 {
                        // The interval after the drain test saw the queue empty: it was this
                        // session's, or the competitor left.
                        self.competing = None;
                        self.compete_evidence = 0;
                    } else {
                        // Loss well above the path's own (measured before competing, where no
                        // queue stood) is the shared buffer overflowing: back off as a
                        // loss-based flow does there, once per episode.
                        let lost = if sent_bytes > 0 {
                            1.0 - delivered_bytes.min(sent_bytes) as f64 / sent_bytes as f64
                        } else {
                            0.0
                        };
                        let overflow = lost > 2.0 * self.loss_rate() + COMPETE_LOSS_MARGIN;
                        if overflow && n >= c.last_backoff + COMPETE_BACKOFF_GAP {
                            c.backoff(s.now, s.srtt);
                            c.last_backoff = n;
                        } else {
                            c.base = c.base.max(c.growth(s.now, s.srtt));
                        }
                        // Never far above what gets through (judged only where the last two
                        // intervals both sent at least the base: deliveries lag sending by the
                        // queue); growth resumes from there.
                        if n > 1
                            && COMPETE_CYCLE[(n - 1) % len] >= 1.0
                            && COMPETE_CYCLE[(n - 2) % len] >= 1.0
                            && c.base > last_bw * COMPETE_MAX_OVERSHOOT
                        {
                            c.base = last_bw * COMPETE_MAX_OVERSHOOT;
                            c.restart(s.now, s.srtt);
                        }
                        c.intervals = n + 1;
                        self.rate = c.base * COMPETE_CYCLE[n % len];
                        self.competing = Some(c);
                    }
                }
                if self.competing.is_none() {
                    // Evidence of a competitor: the queue stayed above target although the
                    // session already sends well below what got through when the queue rose (a
                    // deep cut, in one step or several small ones). A queue of this session's own
                    // empties after such a cut.
                    if q <= target {
                        self.compete_evidence = 0;
                        self.yield_from = None;
                    } else if self.last_cut {
                        self.compete_evidence += 1;
                    }
                    if q > target && self.yield_from.is_none() {
                        self.yield_from = Some(last_bw);
                    }
                    let keep_up = 1.0 / (1.0 - self.loss_rate());
                    let min_rtt = s.min_rtt.max(Duration::from_millis(1)).as_secs_f64();
                    self.rate = if q <= target {
                        let g = (target / min_rtt).clamp(MIN_PROBE, MAX_PROBE);
                        let gain = match self.cycle % PROBE_CYCLE {
                            0 => 1.0 + g,
                            1 => 1.0 - g,
                            _ => 1.0,
                        };
                        self.cycle += 1;
                        bw * keep_up * gain
                    } else {
                        // With a queue the bottleneck is busy, so this interval's delivery rate
                        // is the current capacity share; larger samples in the window are stale
                        // (the capacity just fell) and would bring the queue straight back.
                        for b in &mut self.bw {
                            *b = b.min(last_bw);
                        }
                        let drain = (1.0 - (q - target) / (2.0 * min_rtt)).max(0.5);
                        last_bw.min(bw) * keep_up * drain
                    };
                    self.last_cut = self.rate <= 0.75 * self.yield_from.unwrap_or(last_bw);
                    if self.config.compete && self.compete_evidence >= COMPETE_AFTER {
                        // Start from what this session got before it began yielding.
                        let before = self.recent.iter().copied().fold(bw, f64::max);
                        self.competing = Some(Competing::new(before, s.now, s.srtt));
                        self.yield_from = None;
                        self.last_cut = false;
                    }
                }
            }
        }
        // Never so slow that feedback dries up: at least two full-size packets per RTT (per 10
        // ms on shorter paths), or the user's minimum if higher.
        let keepalive = 2.0 * 1500.0 * 8.0 / s.srtt.max(Duration::from_millis(10)).as_secs_f64();
        let floor = (self.limits.min as f64).max(keepalive).min(self.limits.target as f64);
        self.rate = self.rate.clamp(floor, self.limits.target as f64);
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

    fn state(&self) -> String {
        let mut line = format!(
            "{:?} bw {:.1}M loss {:.3} q {:.1}ms",
            self.phase,
            self.bandwidth() / 1e6,
            self.loss_rate(),
            self.last_queue.as_secs_f64() * 1e3
        );
        match &self.competing {
            Some(c) => line += &format!(" competing n {} base {:.1}M", c.intervals, c.base / 1e6),
            None => line += &format!(" evidence {}", self.compete_evidence),
        }
        line
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
/// 2 ms: a sending thread woken late by the scheduler (common on a loaded machine) catches up
/// within that much lateness instead of losing the time for good.
pub const PACER_BURST_TIME: Duration = Duration::from_millis(2);

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

    /// A fluid model of one bottleneck: capacity in bit/s, queue in bits.
    struct Fluid {
        capacity: f64,
        queue: f64,
        delivered: f64,
    }

    impl Fluid {
        /// Sends at `rate` for `dt`; returns the sample the controller would see.
        fn step(&mut self, now: Instant, rate: f64, dt: f64) -> RateSample {
            self.queue = (self.queue + (rate - self.capacity) * dt).max(0.0);
            self.delivered += rate.min(self.capacity) * dt;
            let q = Duration::from_secs_f64(self.queue / self.capacity);
            RateSample {
                now,
                rtt: Some(Duration::from_millis(50) + q),
                min_rtt: Duration::from_millis(50),
                srtt: Duration::from_millis(50),
                queue_delay: q,
                delivered_bytes: (self.delivered / 8.0) as u64,
                sent_bytes: (self.delivered / 8.0) as u64,
                sending_rate: rate as u64,
            }
        }
    }

    /// A buffer-filling competitor (the queue stays at 150 ms whatever this session sends, and
    /// what it sends gets through, minus 1% that overflows): `fair` holds a share instead of
    /// yielding to the floor, `low` yields.
    #[test]
    fn fair_competes_with_a_buffer_filling_flow_and_low_yields() {
        let limits = RateLimits { target: 1_000_000_000, min: 0 };
        let run = |config: AdaptiveConfig| {
            let mut c = Adaptive::new(config, limits);
            let t0 = Instant::now();
            let (dt, mut t, mut delivered) = (0.010, 0.0, 0.0);
            // Alone for 2 s on a 100 Mbit/s link, then the competitor arrives and keeps the
            // queue full; this session's deliveries are its own sending rate, capped at half
            // the link (its fair share), minus 1% loss.
            while t < 20.0 {
                t += dt;
                let competing = t > 2.0;
                let rate = c.rate() as f64;
                let got = if competing { rate.min(50e6) * 0.99 } else { rate.min(100e6) };
                delivered += got * dt;
                let q = if competing {
                    Duration::from_millis(150)
                } else {
                    Duration::from_secs_f64(((rate - 100e6).max(0.0) / 100e6) * 0.05)
                };
                c.on_sample(&RateSample {
                    now: t0 + Duration::from_secs_f64(t),
                    rtt: Some(Duration::from_millis(50) + q),
                    min_rtt: Duration::from_millis(50),
                    srtt: Duration::from_millis(50) + q,
                    queue_delay: q,
                    delivered_bytes: (delivered / 8.0) as u64,
                    sent_bytes: (delivered / 8.0 / 0.99) as u64,
                    sending_rate: rate as u64,
                });
            }
            c.rate() as f64
        };
        let fair = run(AdaptiveConfig::fair());
        let low = run(AdaptiveConfig::low());
        assert!(fair > 20e6, "fair should hold a share against the competitor: {fair}");
        assert!(low < 5e6, "low should yield: {low}");
    }

    /// Competing against a buffer-filling flow: one episode of overflow loss cuts the base once
    /// by [`COMPETE_BETA`], and it grows back the way CUBIC's window does, reaching the rate it
    /// had within about `K` seconds; the slow yield that gets there (many small cuts, the queue
    /// barely above the target) counts as evidence of a competitor too.
    #[test]
    fn competing_backs_off_once_per_overflow_and_grows_back() {
        let limits = RateLimits { target: 1_000_000_000, min: 0 };
        let mut c = Adaptive::new(AdaptiveConfig::fair(), limits);
        let t0 = Instant::now();
        let (dt, mut t, mut delivered, mut sent) = (0.010, 0.0, 0.0f64, 0.0f64);
        let mut rate_at = |c: &mut Adaptive, until: f64, lossy: Option<(f64, f64)>| {
            while t < until {
                t += dt;
                let rate = c.rate() as f64;
                // Alone for 2 s, then a competitor holds the queue 2 ms above the target: this
                // session's share is what it sends, up to 50 Mbit/s.
                let queue = if t > 2.0 {
                    Duration::from_millis(12)
                } else {
                    Duration::from_secs_f64(((rate - 100e6).max(0.0) / 100e6) * 0.05)
                };
                let got = if t > 2.0 { rate.min(50e6) } else { rate.min(100e6) };
                let lost = match lossy {
                    Some((from, to)) if t >= from && t < to => 0.05,
                    _ => 0.0,
                };
                sent += got * dt;
                delivered += got * (1.0 - lost) * dt;
                c.on_sample(&RateSample {
                    now: t0 + Duration::from_secs_f64(t),
                    rtt: Some(Duration::from_millis(50) + queue),
                    min_rtt: Duration::from_millis(50),
                    srtt: Duration::from_millis(50) + queue,
                    queue_delay: queue,
                    delivered_bytes: (delivered / 8.0) as u64,
                    sent_bytes: (sent / 8.0) as u64,
                    sending_rate: rate as u64,
                });
            }
            c.competing.map(|k| k.base)
        };
        let before =
            rate_at(&mut c, 20.0, None).expect("a queue that outlasts deep cuts is a competitor");
        assert!(before > 40e6, "competing holds its share: {before}");
        // One overflow episode of 100 ms: one backoff, not one per interval it touched.
        let cut = rate_at(&mut c, 20.2, Some((20.0, 20.1))).unwrap();
        assert!(
            cut < 0.75 * before && cut > 0.6 * before,
            "one backoff by beta: {cut} after {before}"
        );
        // K = cbrt(W_max (1 - beta) / C) with W_max = 50 Mbit/s x 62 ms / 1500 bytes ≈ 258
        // segments: about 5.8 s.
        let back = rate_at(&mut c, 28.0, None).unwrap();
        assert!(back > 0.95 * before, "grown back within K: {back} of {before}");
    }

    #[test]
    fn adaptive_ramps_holds_a_small_queue_and_follows_capacity_down() {
        let limits = RateLimits { target: 10_000_000_000, min: 0 };
        let mut c = Adaptive::new(AdaptiveConfig::fair(), limits);
        let mut link = Fluid { capacity: 1e9, queue: 0.0, delivered: 0.0 };
        let t0 = Instant::now();
        let dt = 0.010;
        let mut t = 0.0;
        let mut reached = None;
        let mut max_queue: f64 = 0.0;
        while t < 5.0 {
            t += dt;
            let now = t0 + Duration::from_secs_f64(t);
            let s = link.step(now, c.rate() as f64, dt);
            c.on_sample(&s);
            if reached.is_none() && c.rate() as f64 >= 0.9e9 {
                reached = Some(t);
            }
            if t > 2.0 {
                max_queue = max_queue.max(s.queue_delay.as_secs_f64());
            }
        }
        let reached = reached.expect("reaches 90% of capacity");
        assert!(reached < 1.0 + 10.0 * 0.05, "ramp took {reached:.2} s");
        assert!(max_queue < 0.025, "steady queue {:.1} ms", max_queue * 1e3);
        link.capacity = 0.5e9;
        while t < 8.0 {
            t += dt;
            let now = t0 + Duration::from_secs_f64(t);
            let s = link.step(now, c.rate() as f64, dt);
            c.on_sample(&s);
        }
        assert!((c.rate() as f64) < 0.6e9, "follows capacity down: {}", c.rate());
        assert!(link.queue / link.capacity < 0.025, "queue drained");
    }
}
