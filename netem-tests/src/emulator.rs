//! The user-space link emulator's data path: for each direction a reader thread takes IP packets
//! from one TUN device, runs them through the [`Impairment`] model, and hands them to a writer
//! thread that holds them in a queue sorted by departure time (a binary heap, nanosecond
//! timestamps) and writes each to the other TUN device when it is due.
//!
//! Every packet read is accounted for: it is either dropped with a cause, still in the delay
//! line, written, or counted as a write error. [`DirectionStats::unaccounted`] checks that.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tun_rs::SyncDevice;

use crate::model::{DirectionConfig, DropCause, Impairment, Verdict};

/// Configuration of both directions. "a" is the client side, "b" the server side.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// Client -> server.
    pub forward: DirectionConfig,
    /// Server -> client.
    pub reverse: DirectionConfig,
}

impl LinkConfig {
    /// The same impairments in both directions.
    pub fn symmetric(dir: DirectionConfig) -> Self {
        Self { forward: dir.clone(), reverse: dir }
    }
}

/// Counters of one direction, as reported by the emulator (and, for the netem back-end, by the
/// kernel). All byte counts are whole IP packets (headers included), i.e. bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectionStats {
    /// Packets taken from the sending side.
    pub rx_packets: u64,
    /// Bytes taken from the sending side.
    pub rx_bytes: u64,
    /// Packets delivered to the receiving side (duplicates included).
    pub tx_packets: u64,
    /// Bytes delivered to the receiving side.
    pub tx_bytes: u64,
    /// Dropped by Bernoulli loss.
    pub drop_random: u64,
    /// Dropped by Gilbert–Elliott loss.
    pub drop_burst: u64,
    /// Dropped because the bottleneck queue was full.
    pub drop_queue: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
    /// Packets the receiving device refused (write error).
    pub write_errors: u64,
    /// Packets currently in the delay line.
    pub in_flight: u64,
    /// Departure lateness (actual - scheduled), 50th percentile, microseconds.
    pub late_p50_us: u64,
    /// Departure lateness, 99th percentile, microseconds.
    pub late_p99_us: u64,
    /// Departure lateness, maximum, microseconds.
    pub late_max_us: u64,
    /// Time packets waited in the bottleneck queue (the queueing delay the traffic built
    /// itself), median, microseconds (100-us resolution; 0 without a rate limit).
    pub queue_p50_us: u64,
    /// Queueing delay, 95th percentile, microseconds.
    pub queue_p95_us: u64,
    /// Packets the kernel dropped before the emulator read them (TUN/veth queue overflow);
    /// filled in by the harness from the interface statistics.
    pub kernel_drops: u64,
}

impl DirectionStats {
    /// Packets whose fate is unknown: read but neither dropped with a cause, nor in flight, nor
    /// delivered, nor refused. Zero when the emulator is sound.
    pub fn unaccounted(&self) -> i64 {
        let known = self.drop_random
            + self.drop_burst
            + self.drop_queue
            + self.in_flight
            + self.write_errors;
        (self.rx_packets + self.duplicated) as i64 - (known + self.tx_packets) as i64
    }

    /// Share of packets lost at random (both loss models), out of packets read.
    pub fn random_loss_rate(&self) -> f64 {
        if self.rx_packets == 0 {
            0.0
        } else {
            (self.drop_random + self.drop_burst) as f64 / self.rx_packets as f64
        }
    }
}

/// Both directions' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LinkStats {
    /// Client -> server.
    pub forward: DirectionStats,
    /// Server -> client.
    pub reverse: DirectionStats,
}

/// Lateness histogram: 10-us buckets up to 20 ms, the last bucket catching the rest.
const LATE_BUCKET_NS: u64 = 10_000;
const LATE_BUCKETS: usize = 2001;
/// Queueing-delay histogram: 100-us buckets up to 5 s, the last bucket catching the rest.
const QUEUE_BUCKET_NS: u64 = 100_000;
const QUEUE_BUCKETS: usize = 50_001;

/// Upper edge (us) of the bucket holding quantile `q` of `hist`, 0 when it is empty.
fn quantile_us(hist: &[u64], bucket_ns: u64, q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let target = ((total as f64 * q).ceil() as u64).max(1);
    let mut acc = 0;
    for (i, n) in hist.iter().enumerate() {
        acc += n;
        if acc >= target {
            return (i as u64 + 1) * bucket_ns / 1000;
        }
    }
    0
}

#[derive(Debug)]
struct Counters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drop_random: AtomicU64,
    drop_burst: AtomicU64,
    drop_queue: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    write_errors: AtomicU64,
    in_flight: AtomicU64,
    late_max_ns: AtomicU64,
    late: Vec<AtomicU64>,
    queue: Vec<AtomicU64>,
}

impl Counters {
    fn new() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            rx_packets: z(),
            rx_bytes: z(),
            tx_packets: z(),
            tx_bytes: z(),
            drop_random: z(),
            drop_burst: z(),
            drop_queue: z(),
            duplicated: z(),
            reordered: z(),
            write_errors: z(),
            in_flight: z(),
            late_max_ns: z(),
            late: (0..LATE_BUCKETS).map(|_| z()).collect(),
            queue: (0..QUEUE_BUCKETS).map(|_| z()).collect(),
        }
    }

    fn snapshot(&self) -> DirectionStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hist: Vec<u64> = self.late.iter().map(l).collect();
        let qhist: Vec<u64> = self.queue.iter().map(l).collect();
        let pct = |q: f64| quantile_us(&hist, LATE_BUCKET_NS, q);
        DirectionStats {
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            drop_random: l(&self.drop_random),
            drop_burst: l(&self.drop_burst),
            drop_queue: l(&self.drop_queue),
            duplicated: l(&self.duplicated),
            reordered: l(&self.reordered),
            write_errors: l(&self.write_errors),
            in_flight: l(&self.in_flight),
            late_p50_us: pct(0.50),
            late_p99_us: pct(0.99),
            late_max_us: l(&self.late_max_ns) / 1000,
            queue_p50_us: quantile_us(&qhist, QUEUE_BUCKET_NS, 0.50),
            queue_p95_us: quantile_us(&qhist, QUEUE_BUCKET_NS, 0.95),
            kernel_drops: 0,
        }
    }
}

struct Scheduled {
    at: u64,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A running emulator: four threads (a reader and a writer per direction).
#[derive(Debug)]
pub struct Emulator {
    forward: Arc<Counters>,
    reverse: Arc<Counters>,
}

impl Emulator {
    /// Starts forwarding between `a` (client side) and `b` (server side).
    pub fn start(
        a: SyncDevice,
        b: SyncDevice,
        cfg: &LinkConfig,
        seed: u64,
    ) -> std::io::Result<Self> {
        let a = Arc::new(a);
        let b = Arc::new(b);
        let epoch = Instant::now();
        let forward = Arc::new(Counters::new());
        let reverse = Arc::new(Counters::new());
        spawn_direction(
            "fwd",
            a.clone(),
            b.clone(),
            cfg.forward.clone(),
            seed,
            epoch,
            forward.clone(),
        )?;
        spawn_direction(
            "rev",
            b,
            a,
            cfg.reverse.clone(),
            seed ^ 0x5eed_5eed,
            epoch,
            reverse.clone(),
        )?;
        Ok(Self { forward, reverse })
    }

    /// A snapshot of both directions' counters.
    pub fn stats(&self) -> LinkStats {
        LinkStats { forward: self.forward.snapshot(), reverse: self.reverse.snapshot() }
    }
}

fn spawn_direction(
    name: &str,
    from: Arc<SyncDevice>,
    to: Arc<SyncDevice>,
    cfg: DirectionConfig,
    seed: u64,
    epoch: Instant,
    c: Arc<Counters>,
) -> std::io::Result<()> {
    let (tx, rx) = crossbeam_channel::unbounded::<Scheduled>();
    let cap_sleep =
        if cfg.reorder > 0.0 { Duration::from_micros(100) } else { Duration::from_millis(5) };
    let rc = c.clone();
    let name = name.to_string();
    let wname = format!("linkem-{name}-wr");
    thread::Builder::new().name(format!("linkem-{name}-rd")).spawn(move || {
        let has_rate = cfg.rate_bps.is_some();
        let mut imp = Impairment::new(cfg, seed);
        let mut buf = vec![0u8; 65_536];
        let mut seq = 0u64;
        loop {
            let n = match from.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("ferry-linkem: {name}: reading the TUN device failed: {e}");
                    std::process::exit(3);
                }
            };
            let now = epoch.elapsed().as_nanos() as u64;
            rc.rx_packets.fetch_add(1, Ordering::Relaxed);
            rc.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            match imp.on_packet(now, n) {
                Verdict::Drop(DropCause::RandomLoss) => {
                    rc.drop_random.fetch_add(1, Ordering::Relaxed)
                }
                Verdict::Drop(DropCause::BurstLoss) => {
                    rc.drop_burst.fetch_add(1, Ordering::Relaxed)
                }
                Verdict::Drop(DropCause::QueueFull) => {
                    rc.drop_queue.fetch_add(1, Ordering::Relaxed)
                }
                Verdict::Deliver { at, duplicate_at, reordered, queued_ns } => {
                    if has_rate {
                        let b = ((queued_ns / QUEUE_BUCKET_NS) as usize).min(QUEUE_BUCKETS - 1);
                        rc.queue[b].fetch_add(1, Ordering::Relaxed);
                    }
                    if reordered {
                        rc.reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    let data = buf[..n].to_vec();
                    if let Some(d) = duplicate_at {
                        rc.duplicated.fetch_add(1, Ordering::Relaxed);
                        rc.in_flight.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        let _ = tx.send(Scheduled { at: d, seq, data: data.clone() });
                    }
                    rc.in_flight.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    let _ = tx.send(Scheduled { at, seq, data });
                    0
                }
            };
        }
    })?;
    thread::Builder::new().name(wname).spawn(move || {
        let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
        loop {
            if heap.is_empty() {
                match rx.recv() {
                    Ok(p) => heap.push(Reverse(p)),
                    Err(_) => return,
                }
            }
            while let Ok(p) = rx.try_recv() {
                heap.push(Reverse(p));
            }
            let mut now = epoch.elapsed().as_nanos() as u64;
            while let Some(Reverse(top)) = heap.peek() {
                if top.at > now {
                    break;
                }
                let Some(Reverse(p)) = heap.pop() else { break };
                match to.send(&p.data) {
                    Ok(_) => {
                        c.tx_packets.fetch_add(1, Ordering::Relaxed);
                        c.tx_bytes.fetch_add(p.data.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        c.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                c.in_flight.fetch_sub(1, Ordering::Relaxed);
                let late = now - p.at;
                let bucket = ((late / LATE_BUCKET_NS) as usize).min(LATE_BUCKETS - 1);
                c.late[bucket].fetch_add(1, Ordering::Relaxed);
                c.late_max_ns.fetch_max(late, Ordering::Relaxed);
                now = epoch.elapsed().as_nanos() as u64;
            }
            if let Some(Reverse(top)) = heap.peek() {
                let wait = Duration::from_nanos(top.at.saturating_sub(now));
                if wait < Duration::from_micros(20) {
                    std::hint::spin_loop();
                } else {
                    thread::sleep(wait.min(cap_sleep));
                }
            }
        }
    })?;
    Ok(())
}
