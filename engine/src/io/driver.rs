//! The data-path driver: one thread per session owns one connected UDP socket and runs a
//! [`Sender`] or [`Receiver`] against it, exchanging control messages with the control layer
//! over channels.
//!
//! The loop: take the control messages that arrived, drain up to a batch of datagrams without
//! blocking, run timers, send everything the session wants to send, hand its control messages
//! and events out, then block on the socket until the session's next deadline (at most 2 ms, so
//! control messages are picked up promptly). One `recv`/`send` system call per datagram for now;
//! batching (GSO, GRO, recvmmsg via quinn-udp) is the next step for speed.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::mpsc::{Receiver as ChannelReceiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::control::{ControlMessage, FileStatus};
use crate::session::{BlockSink, BlockSource, Event, Receiver, Sender, SessionError};
use crate::wire::MAX_DATAGRAM;

/// The longest the driver blocks on the socket before checking the control channel again.
const MAX_WAIT: Duration = Duration::from_millis(2);
/// Requested socket buffer size in each direction.
const SOCKET_BUFFER: usize = 8 << 20;
/// Datagrams handled per loop iteration before timers and transmission get a turn.
const RECV_BATCH: usize = 256;

/// What the control layer hands the driver.
#[derive(Debug)]
pub enum ControlIn {
    /// A control message from the peer.
    Message(ControlMessage),
    /// The control channel ended (the reason, for the error message).
    Closed(String),
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
    /// A one-line state summary for debugging (`FERRY_DEBUG_DRIVER`).
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
    fn debug_line(&self) -> String {
        format!(
            "rate {} srtt {:?} {:?}",
            self.sender.rate(),
            self.sender.srtt(),
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
}

/// Why a driven session ended without completing.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The session failed (its own error, or the peer's abort).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The control channel ended before the session completed.
    #[error("the control connection ended before the transfer completed: {0}")]
    ControlClosed(String),
    /// The UDP socket failed.
    #[error("the data socket failed: {0}")]
    Socket(std::io::Error),
}

/// What happened on the data path.
#[derive(Debug, Default, Clone)]
pub struct DriveReport {
    /// Per-file outcomes, in the order they were reported.
    pub files: Vec<(u32, FileStatus)>,
    /// Datagrams received from the socket (before authentication).
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Sends the kernel refused (buffer full): treated as loss.
    pub send_drops: u64,
    /// Total size of the files in the manifest (as announced on the control channel).
    pub file_bytes: u64,
}

/// Runs `side` on `socket` (connected to the peer's data port) until the session completes or
/// fails. `control_out` carries the session's control messages to the control layer; it returns
/// false when that layer is gone.
pub fn drive(
    side: &mut dyn Side,
    socket: &UdpSocket,
    control_in: &ChannelReceiver<ControlIn>,
    control_out: &mut dyn FnMut(ControlMessage) -> bool,
) -> (Result<(), DriveError>, DriveReport) {
    let mut report = DriveReport::default();
    let result = drive_inner(side, socket, control_in, control_out, &mut report);
    (result, report)
}

fn drive_inner(
    side: &mut dyn Side,
    socket: &UdpSocket,
    control_in: &ChannelReceiver<ControlIn>,
    control_out: &mut dyn FnMut(ControlMessage) -> bool,
    report: &mut DriveReport,
) -> Result<(), DriveError> {
    let mut rx = vec![0u8; MAX_DATAGRAM + 1];
    let mut tx = vec![0u8; MAX_DATAGRAM];
    let mut failure: Option<SessionError> = None;
    let mut closed: Option<String> = None;
    socket.set_nonblocking(true).map_err(DriveError::Socket)?;
    // Large socket buffers absorb scheduling hiccups (best effort: the kernel caps them at
    // net.core.rmem_max / wmem_max).
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER);
    let debug = std::env::var_os("FERRY_DEBUG_DRIVER").is_some();
    let mut next_debug = Instant::now();
    loop {
        if debug && Instant::now() >= next_debug {
            eprintln!("driver: {}", side.debug_line());
            next_debug += Duration::from_millis(250);
        }
        loop {
            match control_in.try_recv() {
                Ok(ControlIn::Message(m)) => {
                    if let ControlMessage::File(f) = &m {
                        report.file_bytes += f.size;
                    }
                    side.handle_control(m);
                }
                Ok(ControlIn::Closed(reason)) => closed = Some(reason),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed.get_or_insert_with(|| "control layer gone".into());
                    break;
                }
            }
        }
        for _ in 0..RECV_BATCH {
            match socket.recv(&mut rx) {
                Ok(n) => {
                    report.datagrams_in += 1;
                    side.handle_datagram(Instant::now(), &mut rx[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(DriveError::Socket(e)),
            }
        }
        let now = Instant::now();
        side.handle_timeout(now);
        while let Some(len) = side.poll_transmit(now, &mut tx) {
            match socket.send(&tx[..len]) {
                Ok(_) => report.datagrams_out += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock || is_transient(&e) => {
                    report.send_drops += 1;
                }
                Err(e) => return Err(DriveError::Socket(e)),
            }
        }
        while let Some(m) = side.poll_control() {
            if let ControlMessage::File(f) = &m {
                report.file_bytes += f.size;
            }
            if !control_out(m) {
                closed.get_or_insert_with(|| "control layer gone".into());
            }
        }
        while let Some(e) = side.poll_event() {
            match e {
                Event::FileDone { file, status } => report.files.push((file, status)),
                Event::Complete => {}
                Event::Failed(err) => failure = Some(err),
            }
        }
        if side.is_finished() {
            return match failure {
                Some(e) => Err(e.into()),
                None => Ok(()),
            };
        }
        if let Some(reason) = closed {
            return Err(DriveError::ControlClosed(reason));
        }
        let wait = side
            .poll_timeout()
            .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
            .min(MAX_WAIT);
        if wait >= Duration::from_micros(20) {
            // ppoll has high-resolution timers (a socket receive timeout is rounded to jiffies,
            // which would make pacing gaps milliseconds long).
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            let mut fds = [rustix::event::PollFd::new(socket, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(DriveError::Socket(e.into())),
            }
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
    use crate::io::files::{Destination, FileSink, MmapSource};
    use crate::rate::{Policy, RateLimits};
    use crate::session::SessionConfig;
    use std::sync::mpsc;

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
        let mut source = MmapSource::new();
        for name in ["big", "empty"] {
            let f = std::fs::File::open(src_dir.path().join(name)).unwrap();
            let size = source.add(&f).unwrap();
            sender.add_file(FileEntry { id: 0, size, mtime_ns: 0, mode: 0o600, path: name.into() });
        }
        sender.finish_manifest();
        let receiver = Receiver::new(config, &secret(), now).unwrap();
        let sink = FileSink::new(dst_dir.path(), Destination::Dir(dst_dir.path().into())).unwrap();

        let (to_recv_tx, to_recv_rx) = mpsc::channel();
        let (to_send_tx, to_send_rx) = mpsc::channel();
        let recv_thread = std::thread::spawn(move || {
            let mut side = ReceiverSide { receiver, sink };
            let mut out = |m| to_send_tx.send(ControlIn::Message(m)).is_ok();
            drive(&mut side, &b, &to_recv_rx, &mut out)
        });
        let mut side = SenderSide { sender, source };
        let mut out = |m| to_recv_tx.send(ControlIn::Message(m)).is_ok();
        let (result, report) = drive(&mut side, &a, &to_send_rx, &mut out);
        result.unwrap();
        assert_eq!(report.files.len(), 2);
        let (rresult, _) = recv_thread.join().unwrap();
        rresult.unwrap();
        assert_eq!(std::fs::read(dst_dir.path().join("big")).unwrap(), data);
        assert_eq!(std::fs::read(dst_dir.path().join("empty")).unwrap(), b"");
    }
}
