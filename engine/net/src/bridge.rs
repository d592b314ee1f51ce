//! The bridge between a session's control stream (QUIC, async) and its data-path driver
//! thread: set-up frames, ABORT, and the two bounded queues that carry control messages each
//! way while the session runs.
//!
//! Both queues are bounded ([`CONTROL_QUEUE`] messages): a peer that floods control messages is
//! slowed by QUIC flow control (the stream reader waits for room), and one that stops reading
//! stops the session's control output (the driver holds it back) instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::control::ControlMessage;
use ferry_engine::io::driver::{
    ControlIn, DataSocket, DriveError, DriveReport, Outbox, Progress, Side, Waker, drive,
};
use ferry_engine::rate::RateLimits;
use ferry_engine::session::abort_code;
use ferry_engine::setup;
use tokio::sync::mpsc;

/// Control messages queued between the control stream and the data thread, each way.
pub const CONTROL_QUEUE: usize = 1024;

/// Cancels sessions: set to `Some(reason)` (e.g. on SIGTERM) and every session watching it
/// ends, removing its partial files and telling the peer the reason.
pub type Cancel = tokio::sync::watch::Receiver<Option<&'static str>>;

/// A session's control stream and the bytes already read past the set-up frame.
#[derive(Debug)]
pub struct ControlStream {
    /// The sending half.
    pub send: quinn::SendStream,
    /// The receiving half.
    pub recv: quinn::RecvStream,
    /// Bytes read after the set-up frame (the first control frames, if the peer pipelined).
    pub leftover: Vec<u8>,
}

/// Why a set-up frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a set-up frame (bad length, too long).
    #[error("malformed setup frame: {0}")]
    Malformed(ferry_engine::wire::ParseError),
    /// The peer finished the stream first.
    #[error("the peer closed the control stream during setup")]
    Closed,
    /// The stream failed.
    #[error("control stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads one setup frame: its type, payload, and any bytes read beyond it. At most
/// [`setup::MAX_SETUP_FRAME`] bytes are accepted (the caller bounds the time).
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<(u8, Vec<u8>, Vec<u8>), FrameError> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4 * 1024];
    loop {
        match setup::split_frame(&buf) {
            Ok(Some((t, payload, used))) => return Ok((t, payload.to_vec(), buf[used..].to_vec())),
            Ok(None) => {}
            Err(e) => return Err(FrameError::Malformed(e)),
        }
        match recv.read(&mut chunk).await? {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => return Err(FrameError::Closed),
        }
    }
}

/// Resolves when the process receives SIGINT or SIGTERM, with a description of the signal.
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "terminated (SIGTERM)",
        _ = int.recv() => "interrupted (SIGINT)",
    }
}

/// Writes an ABORT frame and finishes the stream (waiting a bounded time for the peer to
/// acknowledge it).
pub async fn send_abort(send: &mut quinn::SendStream, code: u16, reason: &str) {
    let mut bytes = Vec::new();
    ControlMessage::Abort { code, reason: reason.to_owned() }.encode(&mut bytes);
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// The driver's input queue: every message queued wakes the driver thread (an eventfd in its
/// poll set), which otherwise sleeps until its session has something to do.
#[derive(Debug, Clone)]
struct Input {
    tx: mpsc::Sender<ControlIn>,
    waker: Arc<Waker>,
}

impl Input {
    async fn send(&self, m: ControlIn) -> bool {
        let sent = self.tx.send(m).await.is_ok();
        self.waker.wake();
        sent
    }

    /// Queues `m` without waking the driver (the caller wakes it once after a batch), unless
    /// the queue is full: then the driver is woken to make room and this waits for it.
    async fn queue(&self, m: ControlIn) -> bool {
        match self.tx.try_send(m) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(m)) => self.send(m).await,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What a running session is told by its owner (besides the peer's control messages).
#[derive(Debug, Clone)]
pub struct SessionHandle {
    input: Input,
}

impl SessionHandle {
    /// Cancels the session with `reason` (its partial files are removed and the peer is told
    /// why). Returns false when the session is already over.
    pub async fn cancel(&self, reason: String) -> bool {
        self.input.send(ControlIn::Cancel(reason)).await
    }

    /// Ends the session because a newer one of the same owner takes over a partial file it
    /// holds. For a caller outside the async runtime (a driver thread): a full input queue
    /// (the session is busy, its driver drains it) is retried for at most a second. Returns
    /// false when the session is already over or did not take the request in time.
    pub fn supersede_now(&self, reason: String) -> bool {
        let mut m = ControlIn::Supersede(reason);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            match self.input.tx.try_send(m) {
                Ok(()) => {
                    self.input.waker.wake();
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(back))
                    if std::time::Instant::now() < deadline =>
                {
                    m = back;
                    self.input.waker.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
    }

    /// Changes the session's rate limits: applied here when this end sends, sent to the
    /// sender as a RATE_LIMIT when this end receives. Returns false when the session is
    /// already over.
    pub async fn set_limits(&self, limits: RateLimits) -> bool {
        self.input.send(ControlIn::SetLimits(limits)).await
    }
}

/// Runs a session: the driver on its own thread with `socket`, control messages bridged to the
/// QUIC stream in both directions. Returns when the session is over and, where the peer needs
/// them ([`Side::speaks_last`], or the session failed), the peer has read every control message
/// (or a bounded wait ran out). `on_start` receives a handle to the
/// running session.
pub async fn run_session(
    stream: ControlStream,
    side: Box<dyn Side + Send>,
    socket: DataSocket,
    on_progress: Box<dyn FnMut(&Progress) + Send>,
    cancel: Cancel,
    on_start: impl FnOnce(SessionHandle),
) -> (Result<(), DriveError>, DriveReport) {
    let ControlStream { mut send, recv, leftover } = stream;
    let speaks_last = side.speaks_last();
    let waker = match Waker::new() {
        Ok(w) => Arc::new(w),
        Err(e) => {
            let e = DriveError::ControlClosed(format!("cannot create the driver's waker: {e}"));
            return (Err(e), DriveReport::default());
        }
    };
    let (in_tx, in_rx) = mpsc::channel::<ControlIn>(CONTROL_QUEUE);
    let input = Input { tx: in_tx, waker: waker.clone() };
    let (out_tx, out_rx) = mpsc::channel::<ControlMessage>(CONTROL_QUEUE);
    let canceller = spawn_canceller(cancel, input.clone());
    let driver = match spawn_driver(side, socket, waker, in_rx, out_tx, on_progress) {
        Ok(d) => d,
        Err(e) => {
            canceller.abort();
            let e = DriveError::ControlClosed(format!("cannot start the data-path thread: {e}"));
            return (Err(e), DriveReport::default());
        }
    };
    on_start(SessionHandle { input: input.clone() });
    let reader = tokio::spawn(read_control(recv, leftover, input));
    // The driver's output ends when its thread does.
    write_control(&mut send, out_rx).await;
    canceller.abort();
    let outcome = match tokio::task::spawn_blocking(move || driver.join()).await {
        Ok(Ok(outcome)) => outcome,
        _ => (
            Err(DriveError::ControlClosed("the data-path thread panicked".into())),
            DriveReport::default(),
        ),
    };
    // A cancelled session tells its peer why (the session itself stopped without a word).
    let told = match &outcome.0 {
        Err(DriveError::Cancelled(reason)) => Some((abort_code::CANCELLED, reason)),
        Err(DriveError::Superseded(reason)) => Some((abort_code::SUPERSEDED, reason)),
        _ => None,
    };
    if let Some((code, reason)) = told {
        let mut bytes = Vec::new();
        ControlMessage::Abort { code, reason: reason.clone() }.encode(&mut bytes);
        let _ = send.write_all(&bytes).await;
    }
    let _ = send.finish();
    // Waiting until the peer has read the stream to its end costs a round trip: worth it when
    // the peer needs what this end said last (the receiver's results, an ABORT), not after a
    // sender heard every result.
    if speaks_last || outcome.0.is_err() {
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
    reader.abort();
    outcome
}

/// Cancellation (a signal): the driver ends as if the control channel had closed, which drops
/// its file sink (partial files are removed), and the peer gets an ABORT saying why.
fn spawn_canceller(mut cancel: Cancel, input: Input) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let reason = match cancel.wait_for(Option::is_some).await {
            Ok(r) => (*r).expect("waited for Some"),
            Err(_) => return,
        };
        let _ = input.send(ControlIn::Cancel(reason.to_owned())).await;
    })
}

type DriveOutcome = (Result<(), DriveError>, DriveReport);

/// Starts the data-path thread: it drives `side` on `socket`, taking control input from
/// `input` and queueing control output on `output`, both without blocking.
fn spawn_driver(
    mut side: Box<dyn Side + Send>,
    mut socket: DataSocket,
    waker: Arc<Waker>,
    mut input: mpsc::Receiver<ControlIn>,
    output: mpsc::Sender<ControlMessage>,
    mut on_progress: Box<dyn FnMut(&Progress) + Send>,
) -> std::io::Result<std::thread::JoinHandle<DriveOutcome>> {
    std::thread::Builder::new().name("ferry-data".into()).spawn(move || {
        use mpsc::error::{TryRecvError, TrySendError};
        let mut out = |m| match output.try_send(m) {
            Ok(()) => Outbox::Sent,
            Err(TrySendError::Full(m)) => Outbox::Full(m),
            Err(TrySendError::Closed(_)) => Outbox::Closed,
        };
        let mut take = || match input.try_recv() {
            Ok(m) => Some(m),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(ControlIn::Closed("control layer gone".into())),
        };
        drive(side.as_mut(), &mut socket, &waker, &mut take, &mut out, on_progress.as_mut())
    })
}

/// Reads control frames from the peer into the driver's queue until the stream ends.
async fn read_control(mut recv: quinn::RecvStream, mut buf: Vec<u8>, input: Input) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Every frame a read brought goes to the driver with one wake-up, not one per frame
        // (a tree of small files is a stream of short frames).
        let mut used_total = 0;
        loop {
            match ControlMessage::decode(&buf[used_total..]) {
                Ok(Some((m, used))) => {
                    used_total += used;
                    if !input.queue(ControlIn::Message(m)).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("malformed control frame: {e}");
                    let _ = input.send(ControlIn::Closed(reason)).await;
                    return;
                }
            }
        }
        buf.drain(..used_total);
        if used_total > 0 {
            input.waker.wake();
        }
        let reason = match recv.read(&mut chunk).await {
            Ok(Some(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Ok(None) => "the peer closed the control stream".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = input.send(ControlIn::Closed(reason)).await;
        return;
    }
}

/// Writes the driver's control messages to the peer until the session is over.
async fn write_control(send: &mut quinn::SendStream, mut output: mpsc::Receiver<ControlMessage>) {
    let mut bytes = Vec::new();
    while let Some(m) = output.recv().await {
        bytes.clear();
        m.encode(&mut bytes);
        // Whatever else is already waiting goes in the same write (up to 64 KiB).
        while bytes.len() < 64 * 1024 {
            match output.try_recv() {
                Ok(m) => m.encode(&mut bytes),
                Err(_) => break,
            }
        }
        if send.write_all(&bytes).await.is_err() {
            break;
        }
    }
}
