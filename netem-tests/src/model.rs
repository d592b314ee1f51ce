//! The impairment model of one link direction, without I/O (sans-IO): given a packet's arrival
//! time and length it decides whether the packet is dropped (and why) or when each copy leaves.
//!
//! Order of stages, the same as a router with a lossy wire behind it:
//! 1. random loss: Bernoulli with probability `loss`, or a Gilbert–Elliott two-state chain;
//! 2. the bottleneck: a FIFO served at `rate_bps` with a drop-tail byte limit `queue_bytes`
//!    (fluid model: the queue holds `(link_free - now) * rate` bytes when a packet arrives);
//! 3. propagation: one-way `delay` plus uniform jitter in `[-jitter, +jitter]`; by default
//!    jitter never reorders (a packet never leaves before the one in front of it);
//! 4. reordering: with probability `reorder`, a packet is held back an extra `reorder_extra`
//!    so that the packets behind it overtake it;
//! 5. duplication: with probability `duplicate`, a second copy leaves with the first.
//!
//! All times are nanoseconds on a monotonic clock chosen by the caller.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Gilbert–Elliott bursty loss: a good and a bad state with their own loss probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GilbertElliott {
    /// Probability of moving good -> bad, per packet.
    pub p_good_to_bad: f64,
    /// Probability of moving bad -> good, per packet.
    pub p_bad_to_good: f64,
    /// Loss probability while in the good state.
    pub loss_good: f64,
    /// Loss probability while in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// A chain with the given mean loss rate and mean burst length (packets in the bad state),
    /// lossless in the good state and losing every packet in the bad state (Gilbert model).
    pub fn with_mean(mean_loss: f64, mean_burst: f64) -> Self {
        let r = 1.0 / mean_burst.max(1.0);
        // Stationary share of the bad state is p / (p + r) = mean_loss.
        let p = if mean_loss >= 1.0 { 1.0 } else { r * mean_loss / (1.0 - mean_loss) };
        Self { p_good_to_bad: p.min(1.0), p_bad_to_good: r, loss_good: 0.0, loss_bad: 1.0 }
    }

    /// Long-run loss rate of this chain.
    pub fn mean_loss(&self) -> f64 {
        let denom = self.p_good_to_bad + self.p_bad_to_good;
        if denom == 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_to_bad / denom;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Configuration of one direction of the emulated link (JSON fields may be omitted: they
/// default to "no impairment").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DirectionConfig {
    /// One-way propagation delay, microseconds.
    pub delay_us: u64,
    /// Jitter amplitude, microseconds (uniform in +-jitter, clamped at zero total delay).
    pub jitter_us: u64,
    /// Random (Bernoulli) loss probability per packet, 0..=1.
    pub loss: f64,
    /// Bursty loss; when set it replaces `loss`.
    pub gilbert: Option<GilbertElliott>,
    /// Bottleneck rate in bits per second; `None` means no rate limit.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit in bytes in front of the bottleneck; `None` means one
    /// bandwidth-delay product of the whole path (rate x 2 x delay, at least 64 KiB).
    pub queue_bytes: Option<u64>,
    /// Probability that a packet is held back by `reorder_extra_us`.
    pub reorder: f64,
    /// Extra hold time of a reordered packet, microseconds.
    pub reorder_extra_us: u64,
    /// Probability that a packet is duplicated.
    pub duplicate: f64,
}

impl DirectionConfig {
    /// The queue limit actually used, in bytes (see `queue_bytes`).
    pub fn effective_queue_bytes(&self) -> u64 {
        match (self.queue_bytes, self.rate_bps) {
            (Some(q), _) => q,
            (None, Some(rate)) => bdp_bytes(rate, 2 * self.delay_us).max(64 * 1024),
            (None, None) => u64::MAX,
        }
    }

    /// Long-run random loss rate (Bernoulli or Gilbert–Elliott), not counting queue drops.
    pub fn mean_random_loss(&self) -> f64 {
        self.gilbert.map_or(self.loss, |g| g.mean_loss())
    }

    /// Checks that every probability is in 0..=1 and that a queue is not empty.
    pub fn validate(&self) -> Result<(), String> {
        let probs = [("loss", self.loss), ("reorder", self.reorder), ("duplicate", self.duplicate)];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in 0..=1, got {p}"));
            }
        }
        if let Some(g) = self.gilbert {
            for p in [g.p_good_to_bad, g.p_bad_to_good, g.loss_good, g.loss_bad] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("Gilbert-Elliott parameters must be in 0..=1, got {p}"));
                }
            }
        }
        if self.rate_bps == Some(0) {
            return Err("rate must be positive (omit it for an unlimited link)".into());
        }
        if self.queue_bytes == Some(0) {
            return Err("queue must hold at least one packet".into());
        }
        Ok(())
    }
}

/// Bytes in flight for `rate_bps` over `rtt_us` microseconds.
pub fn bdp_bytes(rate_bps: u64, rtt_us: u64) -> u64 {
    ((rate_bps as u128 * rtt_us as u128) / 8_000_000) as u64
}

/// Why a packet was dropped. Every drop the emulator makes has exactly one cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Bernoulli random loss.
    RandomLoss,
    /// Gilbert–Elliott loss.
    BurstLoss,
    /// The drop-tail queue in front of the bottleneck was full.
    QueueFull,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped, with its cause.
    Drop(DropCause),
    /// Leaves at `at` (ns); `duplicate_at` is the departure of a second copy, if any.
    Deliver {
        /// Departure time of the packet, ns.
        at: u64,
        /// Departure time of a duplicate, ns.
        duplicate_at: Option<u64>,
        /// The packet was held back to be reordered.
        reordered: bool,
        /// Time it waited in the bottleneck queue before its transmission began, ns.
        queued_ns: u64,
    },
}

/// Impairment state of one direction.
#[derive(Debug)]
pub struct Impairment {
    cfg: DirectionConfig,
    queue_limit: u64,
    rng: Rng,
    ge_bad: bool,
    link_free_ns: u64,
    last_departure_ns: u64,
}

impl Impairment {
    /// A fresh direction with its own seeded random stream.
    pub fn new(cfg: DirectionConfig, seed: u64) -> Self {
        let queue_limit = cfg.effective_queue_bytes();
        Self {
            cfg,
            queue_limit,
            rng: Rng::new(seed),
            ge_bad: false,
            link_free_ns: 0,
            last_departure_ns: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DirectionConfig {
        &self.cfg
    }

    /// Bytes waiting for the bottleneck at time `now_ns` (fluid model).
    pub fn queued_bytes(&self, now_ns: u64) -> u64 {
        match self.cfg.rate_bps {
            Some(rate) if self.link_free_ns > now_ns => {
                ((self.link_free_ns - now_ns) as u128 * rate as u128 / 8_000_000_000) as u64
            }
            _ => 0,
        }
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now_ns`.
    pub fn on_packet(&mut self, now_ns: u64, len: usize) -> Verdict {
        // 1. Random loss.
        if let Some(g) = self.cfg.gilbert {
            let flip = if self.ge_bad { g.p_bad_to_good } else { g.p_good_to_bad };
            if self.rng.chance(flip) {
                self.ge_bad = !self.ge_bad;
            }
            let p = if self.ge_bad { g.loss_bad } else { g.loss_good };
            if self.rng.chance(p) {
                return Verdict::Drop(DropCause::BurstLoss);
            }
        } else if self.rng.chance(self.cfg.loss) {
            return Verdict::Drop(DropCause::RandomLoss);
        }
        // 2. Bottleneck with a drop-tail queue.
        let mut t = now_ns;
        let mut queued_ns = 0;
        if let Some(rate) = self.cfg.rate_bps {
            if self.queued_bytes(now_ns) + len as u64 > self.queue_limit {
                return Verdict::Drop(DropCause::QueueFull);
            }
            let start = self.link_free_ns.max(now_ns);
            queued_ns = start - now_ns;
            let tx_ns = (len as u128 * 8 * 1_000_000_000 / rate as u128) as u64;
            self.link_free_ns = start + tx_ns;
            t = self.link_free_ns;
        }
        // 3. Propagation delay and jitter, order-preserving.
        let mut delay = self.cfg.delay_us as i64 * 1000;
        if self.cfg.jitter_us > 0 {
            let j = self.cfg.jitter_us as i64 * 1000;
            delay += self.rng.range_i64(-j, j);
        }
        let mut at = t + delay.max(0) as u64;
        at = at.max(self.last_departure_ns);
        self.last_departure_ns = at;
        // 4. Reordering: this packet alone is held back; the order-keeping clock is not moved.
        let mut reordered = false;
        if self.cfg.reorder > 0.0 && self.rng.chance(self.cfg.reorder) {
            at += self.cfg.reorder_extra_us * 1000;
            reordered = true;
        }
        // 5. Duplication.
        let duplicate_at =
            (self.cfg.duplicate > 0.0 && self.rng.chance(self.cfg.duplicate)).then_some(at);
        Verdict::Deliver { at, duplicate_at, reordered, queued_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: DirectionConfig, n: usize, gap_ns: u64, len: usize) -> (Vec<Verdict>, Impairment) {
        let mut imp = Impairment::new(cfg, 42);
        let v = (0..n).map(|i| imp.on_packet(i as u64 * gap_ns, len)).collect();
        (v, imp)
    }

    #[test]
    fn bernoulli_loss_rate_is_within_binomial_bounds() {
        let cfg = DirectionConfig { loss: 0.02, ..Default::default() };
        let n = 200_000;
        let (v, _) = run(cfg, n, 1000, 1000);
        let lost = v.iter().filter(|x| matches!(x, Verdict::Drop(DropCause::RandomLoss))).count();
        // 99% interval: +-2.576 sigma, sigma = sqrt(n p (1-p)) = 62.6 packets.
        let expect = 0.02 * n as f64;
        assert!(
            (lost as f64 - expect).abs() < 2.576 * (n as f64 * 0.02 * 0.98).sqrt() * 1.5,
            "{lost}"
        );
    }

    #[test]
    fn gilbert_elliott_mean_and_burstiness() {
        let g = GilbertElliott::with_mean(0.01, 4.0);
        assert!((g.mean_loss() - 0.01).abs() < 1e-9);
        let cfg = DirectionConfig { gilbert: Some(g), ..Default::default() };
        let n = 400_000;
        let (v, _) = run(cfg, n, 1000, 1000);
        let drops: Vec<bool> =
            v.iter().map(|x| matches!(x, Verdict::Drop(DropCause::BurstLoss))).collect();
        let lost = drops.iter().filter(|d| **d).count() as f64;
        assert!((lost / n as f64 - 0.01).abs() < 0.002, "{}", lost / n as f64);
        let bursts = drops.windows(2).filter(|w| w[1] && !w[0]).count() as f64;
        let mean_burst = lost / bursts;
        assert!((3.0..5.0).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn bottleneck_paces_at_rate_and_drops_tail() {
        // 100 Mbit/s, 1000-byte packets offered every 40 us (200 Mbit/s), queue 10 packets.
        let cfg = DirectionConfig {
            rate_bps: Some(100_000_000),
            queue_bytes: Some(10_000),
            ..Default::default()
        };
        let (v, _) = run(cfg, 1000, 40_000, 1000);
        let sent: Vec<u64> = v
            .iter()
            .filter_map(|x| match x {
                Verdict::Deliver { at, .. } => Some(*at),
                _ => None,
            })
            .collect();
        let dropped = v.iter().filter(|x| matches!(x, Verdict::Drop(DropCause::QueueFull))).count();
        // Half the offered load fits.
        assert!((480..=520).contains(&sent.len()), "{}", sent.len());
        assert_eq!(sent.len() + dropped, 1000);
        // Queueing delay is bounded by the queue: 10 packets x 80 us.
        let max_q = v
            .iter()
            .filter_map(|x| match x {
                Verdict::Deliver { queued_ns, .. } => Some(*queued_ns),
                _ => None,
            })
            .max()
            .unwrap();
        assert!((700_000..=800_000).contains(&max_q), "{max_q}");
        // Departures are at least one serialisation time (80 us) apart.
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 80_000));
    }

    #[test]
    fn delay_and_order_preserving_jitter() {
        let cfg = DirectionConfig { delay_us: 50_000, jitter_us: 5_000, ..Default::default() };
        let (v, _) = run(cfg, 10_000, 10_000, 100);
        let mut last = 0;
        for (i, x) in v.iter().enumerate() {
            let Verdict::Deliver { at, .. } = *x else { panic!("no loss configured") };
            let d = at - i as u64 * 10_000;
            assert!(at >= last);
            assert!((45_000_000..=55_010_000).contains(&d) || at == last, "{d}");
            last = at;
        }
    }

    #[test]
    fn reorder_and_duplicate_happen_at_their_rates() {
        let cfg = DirectionConfig {
            delay_us: 1000,
            reorder: 0.1,
            reorder_extra_us: 500,
            duplicate: 0.05,
            ..Default::default()
        };
        let (v, _) = run(cfg, 100_000, 10_000, 100);
        let reordered =
            v.iter().filter(|x| matches!(x, Verdict::Deliver { reordered: true, .. })).count();
        let dups = v
            .iter()
            .filter(|x| matches!(x, Verdict::Deliver { duplicate_at: Some(_), .. }))
            .count();
        assert!((9_000..11_000).contains(&reordered), "{reordered}");
        assert!((4_400..5_600).contains(&dups), "{dups}");
    }

    #[test]
    fn default_queue_is_one_bdp() {
        let cfg =
            DirectionConfig { rate_bps: Some(100_000_000), delay_us: 50_000, ..Default::default() };
        assert_eq!(cfg.effective_queue_bytes(), 1_250_000);
        assert!(DirectionConfig { loss: 1.5, ..Default::default() }.validate().is_err());
    }
}
