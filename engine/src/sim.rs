//! A seeded, deterministic network simulation for the sans-IO sessions.
//!
//! A virtual clock drives a [`Sender`] and a [`Receiver`] connected by two simulated links (one
//! per direction) with rate, drop-tail queue, delay, jitter, random and Gilbert–Elliott loss,
//! reordering, duplication and corruption, plus a reliable in-order control channel. Files live in
//! memory. The same seed always gives the same run, so a failure replays exactly.
//!
//! Used by the engine's property tests and scripted scenarios, the simulated-throughput benchmark
//! and the fuzz targets. Nothing here touches a socket, a file or the real clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use crate::control::{ControlMessage, FileEntry, FileStatus};
use crate::crypto::SessionSecret;
use crate::rate::{Policy, RateLimits};
use crate::session::{
    BlockSink, BlockSource, Event, Receiver, ReceiverStats, Sender, SenderStats, SessionConfig,
    SinkError,
};
use crate::wire::{self, Header};

/// xoshiro256** seeded through splitmix64: small, fast, and stable across platforms and releases
/// (a replayed seed must mean the same run forever).
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Gilbert–Elliott bursty loss: a two-state Markov chain stepped once per packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state.
    pub p_bad_to_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let pi_bad = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

/// One direction of a simulated path.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Bottleneck rate in bits per second (0: infinitely fast).
    pub rate_bps: u64,
    /// Drop-tail queue at the bottleneck, in bytes.
    pub queue_bytes: usize,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay uniform in `[0, jitter]` per packet (may reorder).
    pub jitter: Duration,
    /// Independent random loss probability.
    pub loss: f64,
    /// Bursty loss, applied in addition to `loss`.
    pub bursty: Option<GilbertElliott>,
    /// Probability that a packet is held back by `reorder_delay` (reordering).
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that one random byte of a packet is flipped.
    pub corrupt: f64,
    /// The link is down from `.0` to `.1` after its first packet: everything offered then is
    /// dropped (a peer killed and restarted, a cable pulled and plugged back).
    pub outage: Option<(Duration, Duration)>,
}

impl LinkConfig {
    /// A clean link of `rate_bps` with one-way `delay` and a one-BDP queue (of the full RTT).
    pub fn clean(rate_bps: u64, delay: Duration) -> Self {
        let bdp = (rate_bps as f64 / 8.0 * (2 * delay).as_secs_f64()) as usize;
        Self {
            rate_bps,
            queue_bytes: bdp.max(64 * 1024),
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            bursty: None,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
            outage: None,
        }
    }
}

/// Counters of one simulated link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets handed to the link.
    pub offered: u64,
    /// Bytes handed to the link.
    pub offered_bytes: u64,
    /// Dropped because the bottleneck queue was full.
    pub queue_drops: u64,
    /// Dropped by random or bursty loss.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Delivered with a flipped byte.
    pub corrupted: u64,
    /// Packets delivered (copies included).
    pub delivered: u64,
    /// The largest queueing delay a packet saw at the bottleneck.
    pub max_queue_delay: Duration,
    /// Bytes offered while the link was down ([`LinkConfig::outage`]), all dropped.
    pub outage_bytes: u64,
}

/// A simulated one-way link.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    busy_until: Option<Instant>,
    in_flight: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    seq: u64,
    bad_state: bool,
    stats: LinkStats,
    /// When the first packet was offered (the origin of [`LinkConfig::outage`]).
    first: Option<Instant>,
}

impl Link {
    /// A link with the given behaviour.
    pub fn new(config: LinkConfig) -> Self {
        Self {
            config,
            busy_until: None,
            in_flight: BinaryHeap::new(),
            seq: 0,
            bad_state: false,
            stats: LinkStats::default(),
            first: None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Offers a packet to the link at `now`.
    pub fn send(&mut self, now: Instant, packet: &[u8], rng: &mut Rng) {
        self.stats.offered += 1;
        self.stats.offered_bytes += packet.len() as u64;
        let c = &self.config;
        let since = now - *self.first.get_or_insert(now);
        if c.outage.is_some_and(|(from, to)| since >= from && since < to) {
            self.stats.outage_bytes += packet.len() as u64;
            return;
        }
        let mut depart = now;
        if c.rate_bps > 0 {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            let queued = start - now;
            let backlog = (queued.as_secs_f64() * c.rate_bps as f64 / 8.0) as usize;
            if backlog + packet.len() > c.queue_bytes {
                self.stats.queue_drops += 1;
                return;
            }
            self.stats.max_queue_delay = self.stats.max_queue_delay.max(queued);
            let tx = Duration::from_nanos((packet.len() as f64 * 8e9 / c.rate_bps as f64) as u64);
            depart = start + tx;
            self.busy_until = Some(depart);
        }
        if let Some(ge) = c.bursty {
            let flip = if self.bad_state { ge.p_bad_to_good } else { ge.p_good_to_bad };
            if rng.chance(flip) {
                self.bad_state = !self.bad_state;
            }
            let p = if self.bad_state { ge.loss_bad } else { ge.loss_good };
            if rng.chance(p) {
                self.stats.lost += 1;
                return;
            }
        }
        if rng.chance(c.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if rng.chance(c.duplicate) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut at = depart + c.delay;
            if !c.jitter.is_zero() {
                at += Duration::from_nanos(rng.range(0, c.jitter.as_nanos() as u64));
            }
            if rng.chance(c.reorder) {
                at += c.reorder_delay;
            }
            let mut bytes = packet.to_vec();
            if rng.chance(c.corrupt) && !bytes.is_empty() {
                let i = rng.range(0, bytes.len() as u64 - 1) as usize;
                bytes[i] ^= 1 << rng.range(0, 7);
                self.stats.corrupted += 1;
            }
            self.seq += 1;
            self.in_flight.push(Reverse((at, self.seq, bytes)));
        }
    }

    /// When the next packet arrives at the far end.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((t, _, _))| *t)
    }

    /// A packet that has arrived by `now`, if any.
    pub fn receive(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_arrival()? > now {
            return None;
        }
        let Reverse((_, _, bytes)) = self.in_flight.pop()?;
        self.stats.delivered += 1;
        Some(bytes)
    }
}

/// A reliable, in-order channel with a fixed one-way delay (what QUIC gives the control layer).
/// Messages cross it encoded, so the framing is exercised too.
#[derive(Debug)]
pub struct ControlChannel {
    delay: Duration,
    queue: VecDeque<(Instant, Vec<u8>)>,
}

impl ControlChannel {
    /// A channel with one-way `delay`.
    pub fn new(delay: Duration) -> Self {
        Self { delay, queue: VecDeque::new() }
    }

    /// Sends a message at `now`.
    pub fn send(&mut self, now: Instant, msg: &ControlMessage) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let at = self.queue.back().map_or(now + self.delay, |(t, _)| (*t).max(now + self.delay));
        self.queue.push_back((at, bytes));
    }

    /// When the next message arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// A message that has arrived by `now`.
    pub fn receive(&mut self, now: Instant) -> Option<ControlMessage> {
        if self.next_arrival()? > now {
            return None;
        }
        let (_, bytes) = self.queue.pop_front()?;
        let (msg, used) = ControlMessage::decode(&bytes).ok()??;
        assert_eq!(used, bytes.len(), "control framing");
        Some(msg)
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Source files held in memory.
#[derive(Debug, Default)]
pub struct MemSource {
    /// File contents by id.
    pub files: Vec<Vec<u8>>,
    /// `(file, offset)`: reads of that file reaching past `offset` fail (a file that shrank).
    pub fail_at: Vec<(usize, u64)>,
}

impl BlockSource for MemSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.files.get(file as usize).ok_or_else(|| io::Error::other("no such file"))?;
        let end = offset + buf.len() as u64;
        if self.fail_at.iter().any(|&(i, at)| i == file as usize && end > at) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank"));
        }
        let start = offset as usize;
        let src = f
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// An in-memory sink that can play a slow disk: at most `capacity` blocks may be pending, and
/// pending blocks drain at `drain_bps`.
#[derive(Debug)]
pub struct MemSink {
    /// Received file contents by id.
    pub files: Vec<Vec<u8>>,
    /// Times each byte was written (exactly-once check).
    pub writes: Vec<Vec<u8>>,
    /// Final status by id (`Some(verified)` once finished).
    pub finished: Vec<Option<bool>>,
    /// Entries as announced.
    pub entries: Vec<FileEntry>,
    slow: Option<(u64, u64)>,
    pending_bytes: f64,
    last_drain: Option<Instant>,
    block_size: usize,
    /// Files whose announcement is refused (like an existing destination file).
    pub refuse: Vec<usize>,
    /// `(file, offset)`: writes of that file reaching past `offset` fail (a disk error).
    pub fail_at: Vec<(usize, u64)>,
    /// `(file, chunks, bytes)`: what the sink holds of the file from an earlier attempt: the
    /// chunks, with the file's bytes as they were then.
    pub held: Vec<(usize, Vec<u64>, Vec<u8>)>,
}

impl MemSink {
    /// A sink; `slow` is `Some((capacity_blocks, drain_bps))` for a slow writer.
    pub fn new(block_size: usize, slow: Option<(u64, u64)>) -> Self {
        Self {
            files: Vec::new(),
            writes: Vec::new(),
            finished: Vec::new(),
            entries: Vec::new(),
            slow,
            pending_bytes: 0.0,
            last_drain: None,
            block_size,
            refuse: Vec::new(),
            fail_at: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Drains pending writes up to `now` (slow-writer mode).
    pub fn advance(&mut self, now: Instant) {
        if let Some((_, drain)) = self.slow {
            if let Some(last) = self.last_drain {
                let drained =
                    now.saturating_duration_since(last).as_secs_f64() * drain as f64 / 8.0;
                self.pending_bytes = (self.pending_bytes - drained).max(0.0);
            }
            self.last_drain = Some(now);
        }
    }
}

impl BlockSink for MemSink {
    fn open(&mut self, file: &FileEntry) -> io::Result<()> {
        assert_eq!(file.id as usize, self.files.len(), "files announced in order");
        let size = usize::try_from(file.size).map_err(|_| io::Error::other("too large"))?;
        self.files.push(vec![0; size]);
        self.writes.push(vec![0; size]);
        self.finished.push(None);
        self.entries.push(file.clone());
        if self.refuse.contains(&(file.id as usize)) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "refused by the test"));
        }
        Ok(())
    }

    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        if self.free_blocks() == 0 {
            return Err(SinkError::Full);
        }
        let end = offset + data.len() as u64;
        if self.fail_at.iter().any(|&(i, at)| i == file as usize && end > at) {
            return Err(SinkError::Io(io::Error::other("write failed (test)")));
        }
        assert!(
            self.finished[file as usize].is_none() && !self.refuse.contains(&(file as usize)),
            "write to a finished or refused file"
        );
        let start = offset as usize;
        let f = &mut self.files[file as usize];
        f[start..start + data.len()].copy_from_slice(data);
        for w in &mut self.writes[file as usize][start..start + data.len()] {
            *w = w.saturating_add(1);
        }
        if self.slow.is_some() {
            self.pending_bytes += data.len() as f64;
        }
        Ok(())
    }

    fn free_blocks(&self) -> u64 {
        match self.slow {
            None => u64::MAX,
            Some((cap, _)) => {
                let pending = (self.pending_bytes / self.block_size as f64).ceil() as u64;
                cap.saturating_sub(pending)
            }
        }
    }

    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        self.finished[file as usize] = Some(verified);
        Ok(())
    }

    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        let Some((_, chunks, bytes)) = self.held.iter().find(|h| h.0 == file as usize) else {
            return Vec::new();
        };
        let c = crate::session::RESUME_CHUNK;
        let f = &mut self.files[file as usize];
        chunks
            .iter()
            .map(|&k| {
                let r = (k * c) as usize..((k + 1) * c) as usize;
                f[r.clone()].copy_from_slice(&bytes[r.clone()]);
                (k * c, crate::session::chunk_cv(k * c, &bytes[r]))
            })
            .collect()
    }
}

/// One simulated transfer.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Files to send.
    pub files: Vec<Vec<u8>>,
    /// Session parameters (both ends).
    pub config: SessionConfig,
    /// Rate-control policy of the sender.
    pub policy: Policy,
    /// Sender to receiver.
    pub forward: LinkConfig,
    /// Receiver to sender.
    pub reverse: LinkConfig,
    /// Slow receiver disk: `(capacity_blocks, drain_bps)`.
    pub slow_sink: Option<(u64, u64)>,
    /// Give up after this much simulated time.
    pub time_limit: Duration,
    /// Record the sender's rate every this often (for trajectory snapshots).
    pub trace_every: Option<Duration>,
    /// Scripted changes of the forward bottleneck rate: `(at, rate_bps)`.
    pub rate_changes: Vec<(Duration, u64)>,
    /// Scripted limits the receiver sends the sender (RATE_LIMIT): `(at, limits)`.
    pub receiver_limits: Vec<(Duration, RateLimits)>,
    /// Files that fail on the way: see [`Faults`].
    pub faults: Faults,
}

/// Per-file failures a scenario injects. Each fails its file alone; the session goes on.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// `(file, offset)`: the sender cannot read the file past `offset` (it shrank).
    pub source_fail_at: Vec<(usize, u64)>,
    /// Files the receiver refuses when they are announced.
    pub sink_refuse: Vec<usize>,
    /// `(file, offset)`: the receiver cannot store the file past `offset`.
    pub sink_fail_at: Vec<(usize, u64)>,
    /// In a resuming session, `(file, chunks)`: the receiver holds these aligned
    /// [`RESUME_CHUNK`](crate::session::RESUME_CHUNK)s of the file from an earlier attempt.
    pub held: Vec<(usize, Vec<u64>)>,
    /// Files whose held chunks are of another version of the file (every byte differs): the
    /// file must fail its digest.
    pub held_stale: Vec<usize>,
}

impl Faults {
    /// Whether file `i` of `size` bytes is meant to fail.
    pub fn fails(&self, i: usize, size: u64) -> bool {
        self.sink_refuse.contains(&i)
            || self.held_stale.contains(&i)
            || self.source_fail_at.iter().any(|&(f, at)| f == i && at < size)
            || self.sink_fail_at.iter().any(|&(f, at)| f == i && at < size)
    }
}

/// What happened in a simulated transfer.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Both ends reported completion.
    pub complete: bool,
    /// Failure events, if any.
    pub errors: Vec<String>,
    /// Simulated time until both ends finished (or the limit).
    pub elapsed: Duration,
    /// Sender counters.
    pub sender: SenderStats,
    /// Receiver counters.
    pub receiver: ReceiverStats,
    /// Forward link counters.
    pub forward: LinkStats,
    /// Reverse link counters.
    pub reverse: LinkStats,
    /// Every file arrived byte for byte.
    pub files_match: bool,
    /// Every byte was written to the sink exactly once.
    pub written_once: bool,
    /// Final per-file status at the receiver.
    pub statuses: Vec<Option<FileStatus>>,
    /// Packet numbers on the wire were strictly increasing in each direction (no nonce reuse).
    pub nonces_unique: bool,
    /// `(ms since start, sender rate in Mbit/s)` samples.
    pub rate_trace: Vec<(u64, f64)>,
    /// Total file bytes.
    pub file_bytes: u64,
    /// The sender's rate limits when it ended (its own within the receiver's).
    pub final_limits: RateLimits,
}

/// Runs `scenario` with `seed`.
pub fn run(seed: u64, scenario: &Scenario) -> Outcome {
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut secret = [0u8; 32];
    for chunk in secret.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let secret = SessionSecret::new(secret);
    let mut config = scenario.config.clone();
    // The control layer measures the RTT during its handshake and hands it to the session.
    config.initial_rtt = scenario.forward.delay + scenario.reverse.delay;
    let factory = scenario.policy.factory();
    let mut sender = Sender::new(config.clone(), &secret, factory.as_ref(), t0).expect("config");
    let mut receiver = Receiver::new(config.clone(), &secret, t0).expect("config");
    let mut source = MemSource {
        files: scenario.files.clone(),
        fail_at: scenario.faults.source_fail_at.clone(),
    };
    let mut sink = MemSink::new(config.block_size, scenario.slow_sink);
    sink.refuse = scenario.faults.sink_refuse.clone();
    sink.fail_at = scenario.faults.sink_fail_at.clone();
    for (i, chunks) in &scenario.faults.held {
        let mut bytes = scenario.files[*i].clone();
        if scenario.faults.held_stale.contains(i) {
            bytes.iter_mut().for_each(|b| *b ^= 1);
        }
        sink.held.push((*i, chunks.clone(), bytes));
    }
    let mut forward = Link::new(scenario.forward.clone());
    let mut reverse = Link::new(scenario.reverse.clone());
    let mut to_receiver = ControlChannel::new(scenario.forward.delay);
    let mut to_sender = ControlChannel::new(scenario.reverse.delay);
    for (i, f) in scenario.files.iter().enumerate() {
        sender.add_file(FileEntry {
            id: 0,
            size: f.len() as u64,
            mtime_ns: 0,
            mode: 0o644,
            path: format!("file-{i}"),
            part: None,
        });
    }
    sender.finish_manifest();

    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let mut last_pn = [None::<u64>; 2];
    let mut nonces_unique = true;
    let mut errors = Vec::new();
    let (mut sender_done, mut receiver_done) = (false, false);
    let mut statuses = vec![None; scenario.files.len()];
    let mut trace = Vec::new();
    let mut next_trace = scenario.trace_every.map(|_| t0);
    let mut rate_changes: VecDeque<_> = scenario.rate_changes.iter().copied().collect();
    let mut receiver_limits: VecDeque<_> = scenario.receiver_limits.iter().copied().collect();
    let mut now = t0;
    let mut spins = 0u32;
    let deadline = t0 + scenario.time_limit;
    let mut check_pn = |dir: usize, packet: &[u8], ok: &mut bool| {
        if let Ok(h) = Header::decode(packet) {
            if last_pn[dir].is_some_and(|p| h.packet_number <= p) {
                *ok = false;
            }
            last_pn[dir] = Some(h.packet_number);
        }
    };

    while now <= deadline {
        while let Some(&(at, rate)) = rate_changes.front() {
            if t0 + at > now {
                break;
            }
            forward.config.rate_bps = rate;
            rate_changes.pop_front();
        }
        while let Some(&(at, limits)) = receiver_limits.front() {
            if t0 + at > now {
                break;
            }
            receiver.set_limits(limits);
            receiver_limits.pop_front();
        }
        sink.advance(now);
        while let Some(mut p) = forward.receive(now) {
            receiver.handle_datagram(now, &mut p, &mut sink);
        }
        while let Some(mut p) = reverse.receive(now) {
            sender.handle_datagram(now, &mut p);
        }
        while let Some(m) = to_receiver.receive(now) {
            receiver.handle_control(m, &mut sink);
        }
        while let Some(m) = to_sender.receive(now) {
            sender.handle_control(m);
        }
        sender.handle_timeout(now);
        receiver.handle_timeout(now);
        while let Some(len) = sender.poll_transmit(now, &mut source, &mut buf) {
            check_pn(0, &buf[..len], &mut nonces_unique);
            forward.send(now, &buf[..len], &mut rng);
        }
        while let Some(len) = receiver.poll_transmit(now, &sink, &mut buf) {
            check_pn(1, &buf[..len], &mut nonces_unique);
            reverse.send(now, &buf[..len], &mut rng);
        }
        while let Some(m) = sender.poll_control() {
            to_receiver.send(now, &m);
        }
        while let Some(m) = receiver.poll_control() {
            to_sender.send(now, &m);
        }
        while let Some(e) = sender.poll_event() {
            match e {
                Event::Complete => sender_done = true,
                Event::Failed(err) => errors.push(format!("sender: {err}")),
                Event::FileDone { .. } => {}
            }
        }
        while let Some(e) = receiver.poll_event() {
            match e {
                Event::Complete => receiver_done = true,
                Event::Failed(err) => errors.push(format!("receiver: {err}")),
                Event::FileDone { file, status, .. } => statuses[file as usize] = Some(status),
            }
        }
        if let (Some(t), Some(every)) = (next_trace, scenario.trace_every)
            && now >= t
        {
            trace.push(((now - t0).as_millis() as u64, sender.rate() as f64 / 1e6));
            next_trace = Some(t + every);
        }
        let finished = sender.is_finished() && receiver.is_finished();
        if finished && to_receiver.is_empty() && to_sender.is_empty() {
            break;
        }
        let candidates = [
            forward.next_arrival(),
            reverse.next_arrival(),
            to_receiver.next_arrival(),
            to_sender.next_arrival(),
            sender.poll_timeout(),
            receiver.poll_timeout(),
            next_trace,
            rate_changes.front().map(|(at, _)| t0 + *at),
            receiver_limits.front().map(|(at, _)| t0 + *at),
            scenario.slow_sink.map(|_| now + Duration::from_micros(500)),
        ];
        let next =
            candidates.into_iter().flatten().min().unwrap_or(deadline + Duration::from_secs(1));
        if next <= now {
            spins += 1;
            assert!(spins < 10_000, "simulation livelock at {:?}", now - t0);
            now += Duration::from_micros(1);
        } else {
            spins = 0;
            now = next;
        }
    }

    // Files meant to fail are left out of the content checks (their outcome is checked instead).
    let ok_files = |i: &usize| !scenario.faults.fails(*i, scenario.files[*i].len() as u64);
    let files_match = sink.files.len() == scenario.files.len()
        && (0..scenario.files.len()).filter(ok_files).all(|i| sink.files[i] == scenario.files[i]);
    // Held bytes need no write; a block reaching into them writes them once more.
    let held = |i: usize, at: usize| {
        let c = crate::session::RESUME_CHUNK as usize;
        scenario.faults.held.iter().any(|(f, ch)| *f == i && ch.contains(&((at / c) as u64)))
    };
    let written_once = (0..sink.writes.len()).filter(ok_files).all(|i| {
        sink.writes[i].iter().enumerate().all(|(at, &n)| n == 1 || (n == 0 && held(i, at)))
    });
    Outcome {
        complete: sender_done && receiver_done,
        errors,
        elapsed: now - t0,
        sender: sender.stats().clone(),
        receiver: receiver.stats().clone(),
        forward: forward.stats().clone(),
        reverse: reverse.stats().clone(),
        files_match,
        written_once,
        statuses,
        nonces_unique,
        rate_trace: trace,
        file_bytes: scenario.files.iter().map(|f| f.len() as u64).sum(),
        final_limits: sender.limits(),
    }
}
