//! The data-path driver: one thread per session owns one connected UDP socket and runs a
//! [`Sender`] or [`Receiver`] against it, exchanging control messages with the control layer
//! over channels.
//!
//! The loop: take the control messages that arrived, drain the socket without blocking, run
//! timers, send everything the session wants to send, hand its control messages and events out,
//! then block on the socket until the session's next deadline (at most 2 ms, so control messages
//! are picked up promptly).
//!
//! System calls are batched ([`DataSocket`], on quinn-udp): datagrams the pacer releases together
//! leave in one `sendmsg` with UDP generic segmentation offload (GSO: up to 64 equal-sized
//! datagrams per call, the kernel splits them), and arrive through `recvmmsg` with UDP generic
//! receive offload (GRO: the kernel hands over runs of datagrams from the same flow coalesced
//! into one buffer). Where the kernel lacks either, the same code falls back to one datagram per
//! message. Every buffer is allocated once per session.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::control::{ControlMessage, FileStatus};
use crate::session::{BlockSink, BlockSource, Event, Receiver, Sender, SessionError};
use crate::wire::MAX_DATAGRAM;

/// The longest the driver blocks when nothing is due: control input wakes it at once (through
/// its [`Waker`]), so this only bounds how late a progress report may be.
const MAX_WAIT: Duration = PROGRESS_INTERVAL;
/// The longest it blocks while a control message waits for room in the control layer's queue
/// (which does not wake it when room appears).
const HELD_WAIT: Duration = Duration::from_millis(2);
/// Requested socket buffer size in each direction: enough to ride out a scheduling hiccup of
/// tens of milliseconds at several Gbit/s, so the receiver's queue shows up as delay (which the
/// rate controller reacts to) instead of as overflow loss (which it deliberately ignores).
pub const SOCKET_BUFFER: usize = 32 << 20;
/// Datagrams handled per loop iteration before timers and transmission get a turn (a bound in
/// datagrams, not calls: one GRO call can carry 32 x 44 of them, and feedback must not wait
/// behind many milliseconds of decryption).
const RECV_BUDGET: usize = 512;
/// Messages per `recvmmsg` call.
const RECV_SLOTS: usize = quinn_udp::BATCH_SIZE;
/// Bytes per receive slot: one GRO-coalesced run of datagrams is at most 64 KiB.
const RECV_SLOT_BYTES: usize = 1 << 16;
/// Largest payload of one GSO `sendmsg` (the kernel's limit is one 64 KiB IP packet).
const GSO_MAX_BYTES: usize = 65_000;

/// The largest UDP payload that crosses the route to `peer` unfragmented as far as this host
/// knows: the MTU of the route the kernel would use (`IP_MTU` / `IPV6_MTU` of a UDP socket
/// connected to `peer`; connecting a UDP socket sends nothing) less the IP and UDP headers, at
/// most [`MAX_DATAGRAM`]. 65,508 on loopback, 1,472 behind a 1500-byte Ethernet (IPv4). `None`
/// when the kernel cannot say (no route). A path whose narrowest link lies beyond this host's
/// own route (a 9000-byte LAN behind a 1500-byte router) is not seen here: `ferry cp -Z` sets
/// the size by hand.
pub fn route_datagram_limit(peer: SocketAddr) -> Option<usize> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let (any, headers): (SocketAddr, usize) = if peer.is_ipv4() {
        ((Ipv4Addr::UNSPECIFIED, 0).into(), 20 + 8)
    } else {
        ((Ipv6Addr::UNSPECIFIED, 0).into(), 40 + 8)
    };
    let probe = UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    let mtu = if peer.is_ipv4() {
        rustix::net::sockopt::ip_mtu(&probe).ok()?
    } else {
        rustix::net::sockopt::ipv6_mtu(&probe).ok()?
    };
    Some((mtu as usize).saturating_sub(headers).min(MAX_DATAGRAM))
}

/// Wakes a driver blocked on its socket: whoever queues control input for the session calls
/// [`Waker::wake`] after it. An eventfd in the driver's poll set, so a session waiting for
/// nothing but its peer costs no CPU (no periodic polling).
#[derive(Debug)]
pub struct Waker {
    fd: std::os::fd::OwnedFd,
}

impl Waker {
    /// A new waker.
    pub fn new() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        Ok(Self { fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)? })
    }

    /// Wakes the driver (if it is blocked; else its next wait returns at once).
    pub fn wake(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears a wake-up.
    fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b);
    }
}

/// What [`drive`]'s `control_out` did with a message.
#[derive(Debug)]
pub enum Outbox {
    /// Taken.
    Sent,
    /// The queue to the control layer is full: the message comes back and is offered again
    /// later (the session's own queue holds the rest meanwhile).
    Full(ControlMessage),
    /// The control layer is gone.
    Closed,
}

/// One file's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// File id (manifest index).
    pub file: u32,
    /// Outcome.
    pub status: FileStatus,
    /// Why it failed (empty when verified).
    pub reason: String,
    /// The file's path in the manifest, for failed files (empty for verified ones).
    pub path: String,
}

/// What the control layer hands the driver.
#[derive(Debug)]
pub enum ControlIn {
    /// A control message from the peer.
    Message(ControlMessage),
    /// The control channel ended (the reason, for the error message).
    Closed(String),
    /// The session's owner cancels it (a signal, a shutdown, an operator): it ends now with
    /// [`DriveError::Cancelled`], its partial files removed.
    Cancel(String),
    /// A newer session of the same owner takes over a partial file this one holds
    /// ([`Claims`](super::Claims)): it ends now with [`DriveError::Superseded`], its resumable
    /// partials kept for the newer one.
    Supersede(String),
    /// New rate limits for this end's sending (`-l`/`-m` changed while the session runs).
    SetLimits(crate::rate::RateLimits),
}

/// One side of a session as the driver sees it.
pub trait Side {
    /// See [`Sender::handle_datagram`] / [`Receiver::handle_datagram`].
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]);
    /// A control message from the peer.
    fn handle_control(&mut self, msg: ControlMessage);
    /// Timers.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize>;
    /// The next control message to send.
    fn poll_control(&mut self) -> Option<ControlMessage>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Event>;
    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether the session is over.
    fn is_finished(&self) -> bool;
    /// Progress so far, for progress bars and events.
    fn progress(&self) -> SideProgress;
    /// File `file`'s name for reports.
    fn file_name(&self, file: u32) -> String;
    /// New rate limits for the session's data: the sender applies them (within the
    /// receiver's), the receiver sends them to the sender (RATE_LIMIT).
    fn set_limits(&mut self, limits: crate::rate::RateLimits);
    /// Whether the peer needs this end's last control messages to complete: the receiver's
    /// (its FILE_RESULTs end the sender's session); not the sender's, which completes only once
    /// it has heard every result, so nothing it still has to say matters to the receiver.
    fn speaks_last(&self) -> bool;
    /// A one-line state summary, logged every progress interval at DEBUG on target
    /// `ferry::driver` (`FERRY_LOG=ferry::driver=debug` in the CLI).
    fn debug_line(&self) -> String {
        String::new()
    }
}

/// A [`Sender`] with its file source.
#[derive(Debug)]
pub struct SenderSide<S> {
    /// The session.
    pub sender: Sender,
    /// Where file bytes come from.
    pub source: S,
}

impl<S: BlockSource> Side for SenderSide<S> {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) {
        self.sender.handle_datagram(now, datagram);
    }
    fn handle_control(&mut self, msg: ControlMessage) {
        self.sender.handle_control(msg);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.sender.handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.sender.poll_transmit(now, &mut self.source, buf)
    }
    fn speaks_last(&self) -> bool {
        false
    }
    fn file_name(&self, file: u32) -> String {
        self.source.name(file).unwrap_or_else(|| format!("file {file}"))
    }
    fn set_limits(&mut self, limits: crate::rate::RateLimits) {
        self.sender.set_limits(limits);
    }
    fn poll_control(&mut self) -> Option<ControlMessage> {
        self.sender.poll_control()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.sender.poll_event()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.sender.poll_timeout()
    }
    fn is_finished(&self) -> bool {
        self.sender.is_finished()
    }
    fn progress(&self) -> SideProgress {
        let s = self.sender.stats();
        SideProgress {
            bytes: s.new_payload_bytes,
            retransmitted_bytes: s.payload_bytes_sent - s.new_payload_bytes,
            rate_bps: self.sender.rate(),
            target_rate_bps: self.sender.limits().target,
            rtt: self.sender.srtt(),
            dropped: s.dropped.clone(),
            current: self.sender.position().map(|(f, done, size)| (self.file_name(f), done, size)),
        }
    }
    fn debug_line(&self) -> String {
        format!(
            "rate {} srtt {:?} [{}] {:?}",
            self.sender.rate(),
            self.sender.srtt(),
            self.sender.controller_state(),
            self.sender.stats()
        )
    }
}

/// A [`Receiver`] with its file sink.
#[derive(Debug)]
pub struct ReceiverSide<K> {
    /// The session.
    pub receiver: Receiver,
    /// Where file bytes go.
    pub sink: K,
}

impl<K: BlockSink> Side for ReceiverSide<K> {
    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) {
        self.receiver.handle_datagram(now, datagram, &mut self.sink);
    }
    fn handle_control(&mut self, msg: ControlMessage) {
        self.receiver.handle_control(msg, &mut self.sink);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.receiver.handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.receiver.poll_transmit(now, &self.sink, buf)
    }
    fn speaks_last(&self) -> bool {
        true
    }
    fn file_name(&self, file: u32) -> String {
        self.sink.name(file).unwrap_or_else(|| format!("file {file}"))
    }
    fn set_limits(&mut self, limits: crate::rate::RateLimits) {
        self.receiver.set_limits(limits);
    }
    fn poll_control(&mut self) -> Option<ControlMessage> {
        self.receiver.poll_control()
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.receiver.poll_event()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.receiver.poll_timeout()
    }
    fn is_finished(&self) -> bool {
        self.receiver.is_finished()
    }
    fn progress(&self) -> SideProgress {
        let s = self.receiver.stats();
        SideProgress {
            bytes: s.bytes_stored,
            retransmitted_bytes: 0,
            rate_bps: 0,
            target_rate_bps: 0,
            rtt: None,
            dropped: s.dropped.clone(),
            current: self
                .receiver
                .position()
                .map(|(f, done, size)| (self.file_name(f), done, size)),
        }
    }
    fn debug_line(&self) -> String {
        format!("{:?}", self.receiver.stats())
    }
}

/// What one end of a session has done so far ([`Side::progress`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideProgress {
    /// File bytes sent for the first time (sender) or stored (receiver), each counted once.
    pub bytes: u64,
    /// File bytes sent again (sender only).
    pub retransmitted_bytes: u64,
    /// The sender's current pacing rate, bit/s (0 at the receiver).
    pub rate_bps: u64,
    /// The sender's target rate now, bit/s: its own within the receiver's RATE_LIMIT (0 at
    /// the receiver).
    pub target_rate_bps: u64,
    /// The sender's smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// Datagrams this end dropped unread, by reason (forged, replayed, foreign, malformed).
    pub dropped: crate::session::DropCounts,
    /// The file being sent (the sender's frontier) or received (the first block still
    /// missing): its name, the bytes of it done and its size.
    pub current: Option<(String, u64, u64)>,
}

/// A progress report handed to the driver's observer about every [`PROGRESS_INTERVAL`], and
/// once more when the session ends.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Time since the driver started.
    pub elapsed: Duration,
    /// The session's own counters.
    pub side: SideProgress,
    /// Total size of the files announced so far.
    pub total_bytes: u64,
    /// Files with an outcome so far.
    pub files_done: usize,
    /// Files announced so far (the manifest's entries, sent or received).
    pub files_total: usize,
    /// The files that got their outcome since the previous report, each named.
    pub finished: Vec<FileReport>,
    /// Datagrams received and sent, and sends the kernel refused.
    pub datagrams_in: u64,
    /// See [`DriveReport::datagrams_out`].
    pub datagrams_out: u64,
    /// See [`DriveReport::send_drops`].
    pub send_drops: u64,
}

/// How often the driver reports [`Progress`].
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Why a driven session ended without completing.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The session failed (its own error, or the peer's abort).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The control channel ended before the session completed.
    #[error("the control connection ended before the transfer completed: {0}")]
    ControlClosed(String),
    /// The session's owner cancelled it ([`ControlIn::Cancel`]).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A newer session of the same owner took over ([`ControlIn::Supersede`]).
    #[error("superseded: {0}")]
    Superseded(String),
    /// The UDP socket failed.
    #[error("the data socket failed: {0}")]
    Socket(std::io::Error),
}

/// What happened on the data path.
#[derive(Debug, Default, Clone)]
pub struct DriveReport {
    /// Per-file outcomes, in the order they were reported.
    pub files: Vec<FileReport>,
    /// Datagrams received from the socket (before authentication).
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams the kernel refused to send (a transient error): treated as loss.
    pub send_drops: u64,
    /// Datagrams from an address other than the peer's (dropped unread).
    pub foreign_source: u64,
    /// Total size of the files in the manifest (as announced on the control channel).
    pub file_bytes: u64,
    /// Files in the manifest (as announced on the control channel).
    pub files_announced: usize,
    /// The session's own counters when it ended.
    pub side: SideProgress,
}

/// A connected UDP socket with batched, offloaded sends and receives, and the buffers that go
/// with it (allocated once).
#[derive(Debug)]
pub struct DataSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    peer: SocketAddr,
    /// Receive slots, [`RECV_SLOTS`] x [`RECV_SLOT_BYTES`].
    rx: Vec<u8>,
    meta: Vec<RecvMeta>,
    /// The GSO batch being assembled: `tx_count` datagrams of `tx_segment` bytes (the last may
    /// be shorter), `tx_len` bytes in all.
    tx: Vec<u8>,
    tx_len: usize,
    tx_segment: usize,
    tx_count: usize,
    /// The batch is complete (its last datagram is short, or it is full) and waits to be sent.
    tx_sealed: bool,
    /// Length of a datagram parked after the batch (at `tx[tx_len..]`) because it could not join
    /// it; it starts the next batch. 0 when there is none.
    tx_tail: usize,
}

/// How a [`DataSocket::flush`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Nothing is pending any more (sent, or dropped after a transient error).
    Done,
    /// The socket's send buffer is full: the batch is kept; wait for the socket to be writable.
    Blocked,
}

impl DataSocket {
    /// Wraps `socket`, which must be connected to the peer's data port. Sets it non-blocking,
    /// enables GRO where the kernel has it and asks for large socket buffers ([`SOCKET_BUFFER`]:
    /// beyond `net.core.rmem_max` / `wmem_max` where the process may (`CAP_NET_ADMIN`), else up
    /// to those limits; [`DataSocket::buffer_sizes`] says what was granted).
    pub fn new(socket: UdpSocket) -> std::io::Result<Self> {
        let peer = socket.peer_addr()?;
        let state = UdpSocketState::new((&socket).into())?;
        use rustix::net::sockopt;
        if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
            let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        }
        if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
            let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        }
        Ok(Self {
            socket,
            state,
            peer,
            rx: vec![0; RECV_SLOTS * RECV_SLOT_BYTES],
            meta: vec![RecvMeta::default(); RECV_SLOTS],
            tx: vec![0; GSO_MAX_BYTES + MAX_DATAGRAM],
            tx_len: 0,
            tx_segment: 0,
            tx_count: 0,
            tx_sealed: false,
            tx_tail: 0,
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The receive and send buffer sizes the kernel granted (Linux reports twice the usable
    /// size).
    pub fn buffer_sizes(&self) -> (usize, usize) {
        let r = self.state.recv_buffer_size((&self.socket).into()).unwrap_or(0);
        let w = self.state.send_buffer_size((&self.socket).into()).unwrap_or(0);
        (r, w)
    }

    /// Receives what is waiting (about [`RECV_BUDGET`] datagrams at most), handing each datagram
    /// to `side`.
    fn receive(&mut self, side: &mut dyn Side, report: &mut DriveReport) -> Result<(), DriveError> {
        let mut handled = 0;
        while handled < RECV_BUDGET {
            let mut chunks = self.rx.chunks_mut(RECV_SLOT_BYTES);
            let mut iovs: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let n = match self.state.recv((&self.socket).into(), &mut iovs, &mut self.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(DriveError::Socket(e)),
            };
            let now = Instant::now();
            for (meta, buf) in self.meta.iter().zip(iovs.iter_mut()).take(n) {
                // A connected socket only receives from its peer; the check costs nothing.
                if meta.addr != self.peer {
                    report.foreign_source += 1;
                    continue;
                }
                let stride = meta.stride.max(1);
                for datagram in buf[..meta.len].chunks_mut(stride) {
                    report.datagrams_in += 1;
                    handled += 1;
                    side.handle_datagram(now, datagram);
                }
            }
        }
        Ok(())
    }

    /// Asks `side` for datagrams and sends them, batched, until it has nothing more to send now
    /// or the socket's buffer is full.
    fn transmit(
        &mut self,
        side: &mut dyn Side,
        now: Instant,
        report: &mut DriveReport,
    ) -> Result<Flush, DriveError> {
        loop {
            // A sealed batch goes out first (a parked datagram then opens the next one).
            while self.tx_sealed {
                if self.flush(report)? == Flush::Blocked {
                    return Ok(Flush::Blocked);
                }
            }
            let start = self.tx_len;
            let Some(len) = side.poll_transmit(now, &mut self.tx[start..start + MAX_DATAGRAM])
            else {
                break;
            };
            if self.tx_count > 0 && len > self.tx_segment {
                // A longer datagram cannot join the batch: it waits behind it (parked right after
                // it) and starts the next batch once this one is out.
                self.tx_tail = len;
                self.tx_sealed = true;
                continue;
            }
            if self.tx_count == 0 {
                self.tx_segment = len;
            }
            self.tx_len += len;
            self.tx_count += 1;
            // A shorter datagram may end a batch; a full batch has no room for another one.
            if len < self.tx_segment
                || self.tx_count >= self.max_segments()
                || self.tx_len + self.tx_segment > GSO_MAX_BYTES
            {
                self.tx_sealed = true;
            }
        }
        while self.tx_count > 0 {
            self.tx_sealed = true;
            if self.flush(report)? == Flush::Blocked {
                return Ok(Flush::Blocked);
            }
        }
        Ok(Flush::Done)
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Sends the pending batch.
    fn flush(&mut self, report: &mut DriveReport) -> Result<Flush, DriveError> {
        if self.tx_count == 0 {
            self.tx_sealed = false;
            return Ok(Flush::Done);
        }
        debug_assert!(self.tx_count == 1 || self.tx_len > (self.tx_count - 1) * self.tx_segment);
        let transmit = Transmit {
            destination: self.peer,
            ecn: None,
            contents: &self.tx[..self.tx_len],
            segment_size: (self.tx_count > 1).then_some(self.tx_segment),
            src_ip: None,
        };
        let result = self.state.try_send((&self.socket).into(), &transmit);
        match result {
            Ok(()) => report.datagrams_out += self.tx_count as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Flush::Blocked),
            Err(e) if self.tx_count > 1 && self.max_segments() == 1 => {
                // The kernel refused segmentation offload (quinn-udp turned it off for this
                // socket): send the batch one datagram at a time.
                let _ = e;
                for datagram in self.tx[..self.tx_len].chunks(self.tx_segment) {
                    let one = Transmit { contents: datagram, segment_size: None, ..transmit };
                    match self.state.try_send((&self.socket).into(), &one) {
                        Ok(()) => report.datagrams_out += 1,
                        Err(e) if e.kind() == ErrorKind::WouldBlock || is_transient(&e) => {
                            report.send_drops += 1;
                        }
                        Err(e) => return Err(DriveError::Socket(e)),
                    }
                }
            }
            Err(e) if is_transient(&e) => report.send_drops += self.tx_count as u64,
            Err(e) => return Err(DriveError::Socket(e)),
        }
        self.tx_sealed = false;
        if self.tx_tail > 0 {
            // The parked datagram opens the next batch.
            self.tx.copy_within(self.tx_len..self.tx_len + self.tx_tail, 0);
            (self.tx_len, self.tx_segment, self.tx_count) = (self.tx_tail, self.tx_tail, 1);
            self.tx_tail = 0;
        } else {
            self.tx_len = 0;
            self.tx_count = 0;
        }
        Ok(Flush::Done)
    }

    /// Waits until a datagram arrives, the socket becomes writable (when `writable` is asked
    /// for), `waker` is woken, or `wait` has passed.
    fn wait(&self, wait: Duration, writable: bool, waker: &Waker) -> Result<(), DriveError> {
        // ppoll has high-resolution timers (a socket receive timeout is rounded to jiffies, which
        // would make pacing gaps milliseconds long).
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut flags = rustix::event::PollFlags::IN;
        if writable {
            flags |= rustix::event::PollFlags::OUT;
        }
        let mut fds = [
            rustix::event::PollFd::new(&self.socket, flags),
            rustix::event::PollFd::new(&waker.fd, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {
                if !fds[1].revents().is_empty() {
                    waker.drain();
                }
                Ok(())
            }
            Err(e) => Err(DriveError::Socket(e.into())),
        }
    }
}

/// Runs `side` on `socket` until the session completes or fails. `control_in` returns what the
/// control layer has for the session (`None` when nothing is waiting); `control_out` carries
/// the session's control messages to the control layer (both are bounded queues: a peer that
/// stops reading its control stream stops the session's control output, never grows memory).
/// `on_progress` is called about every [`PROGRESS_INTERVAL`] and once at the end. Whoever feeds
/// `control_in` wakes the driver with `waker`.
pub fn drive(
    side: &mut dyn Side,
    socket: &mut DataSocket,
    waker: &Waker,
    control_in: &mut dyn FnMut() -> Option<ControlIn>,
    control_out: &mut dyn FnMut(ControlMessage) -> Outbox,
    on_progress: &mut dyn FnMut(&Progress),
) -> (Result<(), DriveError>, DriveReport) {
    let mut report = DriveReport::default();
    let started = Instant::now();
    let mut reported = 0;
    let io = Io { socket, waker, control_in, control_out, on_progress, reported: &mut reported };
    let result = drive_inner(side, io, &mut report);
    report.side = side.progress();
    on_progress(&progress(side, &report, started, &mut reported));
    (result, report)
}

/// The periodic report; `reported`: how many of the report's file outcomes earlier reports
/// carried (the rest go into this one's [`Progress::finished`], named).
fn progress(
    side: &dyn Side,
    report: &DriveReport,
    started: Instant,
    reported: &mut usize,
) -> Progress {
    let finished = report.files[(*reported).min(report.files.len())..]
        .iter()
        .map(|f| FileReport {
            path: if f.path.is_empty() { side.file_name(f.file) } else { f.path.clone() },
            ..f.clone()
        })
        .collect();
    *reported = report.files.len();
    Progress {
        elapsed: started.elapsed(),
        side: side.progress(),
        total_bytes: report.file_bytes,
        files_done: report.files.len(),
        files_total: report.files_announced,
        finished,
        datagrams_in: report.datagrams_in,
        datagrams_out: report.datagrams_out,
        send_drops: report.send_drops,
    }
}

/// What [`drive`] works with besides the session.
struct Io<'a> {
    socket: &'a mut DataSocket,
    waker: &'a Waker,
    control_in: &'a mut dyn FnMut() -> Option<ControlIn>,
    control_out: &'a mut dyn FnMut(ControlMessage) -> Outbox,
    on_progress: &'a mut dyn FnMut(&Progress),
    /// File outcomes already reported in a [`Progress`].
    reported: &'a mut usize,
}

fn drive_inner(
    side: &mut dyn Side,
    io: Io<'_>,
    report: &mut DriveReport,
) -> Result<(), DriveError> {
    let Io { socket, waker, control_in, control_out, on_progress, reported } = io;
    let mut failure: Option<SessionError> = None;
    let mut ending = Ending::default();
    let debug = tracing::enabled!(target: "ferry::driver", tracing::Level::DEBUG);
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_INTERVAL;
    // A message the control layer's queue had no room for.
    let mut held: Option<ControlMessage> = None;
    loop {
        let now = Instant::now();
        if now >= next_progress {
            on_progress(&progress(side, report, started, reported));
            if debug {
                tracing::debug!(target: "ferry::driver", "driver: {} {report:?}", side.debug_line());
            }
            next_progress = now + PROGRESS_INTERVAL;
        }
        take_control(side, control_in, report, &mut ending);
        socket.receive(side, report)?;
        let now = Instant::now();
        side.handle_timeout(now);
        let blocked = socket.transmit(side, now, report)? == Flush::Blocked;
        give_control(side, control_out, &mut held, report, &mut ending);
        collect_events(side, report, &mut failure);
        if side.is_finished() {
            return match failure {
                Some(e) => Err(e.into()),
                None => Ok(()),
            };
        }
        if let Some(reason) = ending.cancelled {
            return Err(DriveError::Cancelled(reason));
        }
        if let Some(reason) = ending.superseded {
            return Err(DriveError::Superseded(reason));
        }
        if let Some(reason) = ending.closed {
            return Err(DriveError::ControlClosed(reason));
        }
        let cap = if held.is_some() { HELD_WAIT } else { MAX_WAIT };
        let wait = side
            .poll_timeout()
            .map_or(cap, |t| t.saturating_duration_since(Instant::now()))
            .min(cap)
            .min(next_progress.saturating_duration_since(Instant::now()));
        if blocked || wait >= Duration::from_micros(20) {
            socket.wait(if blocked { HELD_WAIT } else { wait }, blocked, waker)?;
        }
    }
}

/// Why the driver will stop after this turn of its loop, besides the session's own end.
#[derive(Debug, Default)]
struct Ending {
    /// The control layer is gone (its reason).
    closed: Option<String>,
    /// The session was cancelled (the reason).
    cancelled: Option<String>,
    /// A newer session took over (the reason).
    superseded: Option<String>,
}

/// Hands the session what the control layer has for it, until a close or a cancel.
fn take_control(
    side: &mut dyn Side,
    control_in: &mut dyn FnMut() -> Option<ControlIn>,
    report: &mut DriveReport,
    ending: &mut Ending,
) {
    while let Some(input) = control_in() {
        match input {
            ControlIn::Message(m) => {
                if let ControlMessage::File(f) = &m {
                    report.file_bytes += f.size;
                    report.files_announced += 1;
                }
                side.handle_control(m);
            }
            ControlIn::Closed(reason) => {
                ending.closed = Some(reason);
                return;
            }
            ControlIn::Cancel(reason) => {
                ending.cancelled = Some(reason);
                return;
            }
            ControlIn::Supersede(reason) => {
                ending.superseded = Some(reason);
                return;
            }
            ControlIn::SetLimits(limits) => side.set_limits(limits),
        }
    }
}

/// Gives the control layer the session's control messages while its queue has room; the one
/// that did not fit is `held` for the next turn.
fn give_control(
    side: &mut dyn Side,
    control_out: &mut dyn FnMut(ControlMessage) -> Outbox,
    held: &mut Option<ControlMessage>,
    report: &mut DriveReport,
    ending: &mut Ending,
) {
    while let Some(m) = held.take().or_else(|| {
        let m = side.poll_control()?;
        if let ControlMessage::File(f) = &m {
            report.file_bytes += f.size;
            report.files_announced += 1;
        }
        Some(m)
    }) {
        match control_out(m) {
            Outbox::Sent => {}
            Outbox::Full(m) => {
                *held = Some(m);
                return;
            }
            Outbox::Closed => {
                ending.closed.get_or_insert_with(|| "control layer gone".into());
                return;
            }
        }
    }
}

/// Records the session's events: per-file outcomes in the report, a failure in `failure`.
fn collect_events(
    side: &mut dyn Side,
    report: &mut DriveReport,
    failure: &mut Option<SessionError>,
) {
    while let Some(e) = side.poll_event() {
        match e {
            Event::FileDone { file, status, reason } => {
                // Only failures are named (a report of many files stays small).
                let path = if status == FileStatus::Verified {
                    String::new()
                } else {
                    side.file_name(file)
                };
                report.files.push(FileReport { file, status, reason, path })
            }
            Event::Complete => {}
            Event::Failed(err) => *failure = Some(err),
        }
    }
}

/// Errors a connected UDP socket reports for earlier datagrams (ICMP unreachable while the peer
/// is not yet listening, or is gone) or for a momentarily full buffer: the protocol treats them as
/// loss and the idle timeout ends a session whose peer really is gone.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::Interrupted)
        || e.raw_os_error() == Some(105) // ENOBUFS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::FileEntry;
    use crate::crypto::{CipherSuite, SessionSecret};
    use crate::io::docroot::{Docroot, RelPath};
    use crate::io::files::{Destination, FileSink, SinkLimits};
    use crate::io::source::{self, FileSource, SourceLimits};
    use crate::rate::{Policy, RateLimits};
    use crate::session::SessionConfig;
    use std::sync::mpsc;

    fn inbox(rx: &mpsc::Receiver<ControlIn>) -> Option<ControlIn> {
        match rx.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(ControlIn::Closed("gone".into())),
        }
    }

    fn outbox(sent: bool) -> Outbox {
        if sent { Outbox::Sent } else { Outbox::Closed }
    }

    /// Two drivers on loopback sockets move two files; the control channel is a pair of
    /// in-process channels.
    #[test]
    fn loopback_transfer() {
        let src_dir = tempfile::tempdir().unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(src_dir.path().join("big"), &data).unwrap();
        std::fs::write(src_dir.path().join("empty"), b"").unwrap();

        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let limits = RateLimits { target: 1_000_000_000, min: 0 };
        let mut config = SessionConfig::new(7, CipherSuite::Aes128, limits);
        config.initial_rtt = Duration::from_millis(1);
        let secret = || SessionSecret::new([9; 32]);
        let now = Instant::now();
        let factory = Policy::Fair.factory();
        let mut sender = Sender::new(config.clone(), &secret(), factory.as_ref(), now).unwrap();
        let root = std::sync::Arc::new(Docroot::open(src_dir.path()).unwrap());
        let mut files = Vec::new();
        for name in ["big", "empty"] {
            let rel = RelPath::parse(name).unwrap();
            files.extend(source::list(&root, &rel, SourceLimits::default()).unwrap());
        }
        for f in &files {
            let path = f.manifest.clone();
            sender.add_file(FileEntry {
                id: 0,
                size: f.size,
                mtime_ns: 0,
                mode: 0o600,
                path,
                part: None,
            });
        }
        let source = FileSource::new(files, SourceLimits::default());
        sender.finish_manifest();
        let receiver = Receiver::new(config, &secret(), now).unwrap();
        let dst = std::sync::Arc::new(Docroot::open(dst_dir.path()).unwrap());
        let sink = FileSink::new(dst, Destination::Dir(RelPath::root()), SinkLimits::default());

        let (to_recv_tx, to_recv_rx) = mpsc::channel();
        let (to_send_tx, to_send_rx) = mpsc::channel();
        // Each end wakes the other after queueing a control message for it.
        let recv_waker = std::sync::Arc::new(Waker::new().unwrap());
        let send_waker = std::sync::Arc::new(Waker::new().unwrap());
        let (rw, sw) = (recv_waker.clone(), send_waker.clone());
        let recv_thread = std::thread::spawn(move || {
            let mut side = ReceiverSide { receiver, sink };
            let mut out = |m| {
                let sent = to_send_tx.send(ControlIn::Message(m)).is_ok();
                sw.wake();
                outbox(sent)
            };
            let mut b = DataSocket::new(b).unwrap();
            drive(&mut side, &mut b, &rw, &mut || inbox(&to_recv_rx), &mut out, &mut |_| {})
        });
        let mut side = SenderSide { sender, source };
        let mut out = |m| {
            let sent = to_recv_tx.send(ControlIn::Message(m)).is_ok();
            recv_waker.wake();
            outbox(sent)
        };
        let mut a = DataSocket::new(a).unwrap();
        let mut last = Progress::default();
        let mut input = || inbox(&to_send_rx);
        let (result, report) =
            drive(&mut side, &mut a, &send_waker, &mut input, &mut out, &mut |p| {
                last = p.clone();
            });
        result.unwrap();
        assert_eq!(report.files.len(), 2);
        assert_eq!(last.side.bytes, data.len() as u64, "final progress counts every byte once");
        assert_eq!(last.total_bytes, data.len() as u64);
        assert_eq!(last.files_done, 2);
        let (rresult, _) = recv_thread.join().unwrap();
        rresult.unwrap();
        assert_eq!(std::fs::read(dst_dir.path().join("big")).unwrap(), data);
        assert_eq!(std::fs::read(dst_dir.path().join("empty")).unwrap(), b"");
    }
}
