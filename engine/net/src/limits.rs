//! What the server allows: limits before a connection is set up (authenticated) and after, with
//! their defaults, and the gate that counts connections and sessions against them.
//!
//! Defaults are chosen so that a server on a small machine stays responsive under abuse while no
//! legitimate use comes near them; every one is a `ferry serve` option (see `SECURITY.md`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits on connections that are not yet set up.
#[derive(Debug, Clone)]
pub struct PreAuth {
    /// From the first packet of a connection to its verified client hello: a connection that has
    /// not authenticated by then is closed. Default 5 s.
    pub setup_timeout: Duration,
    /// Connections in handshake or set-up at once, from all sources. Default 64.
    pub max_connections: usize,
    /// Of those, from one source address. Default 8.
    pub max_per_source: usize,
    /// Above this many connections in set-up, a new connection must first prove its address
    /// (QUIC Retry: one extra round trip) before the server keeps any state for it. Default 16.
    pub retry_above: usize,
    /// Flow-control credit per stream, in bytes (the connection gets twice this and may open
    /// one stream): what a peer can make the server buffer on a connection. Default 64 KiB
    /// (a hello is at most 16 KiB; control messages are read as they arrive).
    pub stream_window: u32,
    /// Failed authentications from one address before it is locked out.
    pub auth_failures: AuthFailures,
}

impl Default for PreAuth {
    fn default() -> Self {
        Self {
            setup_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_per_source: 8,
            retry_above: 16,
            stream_window: 64 * 1024,
            auth_failures: AuthFailures::default(),
        }
    }
}

/// Limits on sessions that are set up.
#[derive(Debug, Clone)]
pub struct PostAuth {
    /// Sessions at once. Default 256.
    pub max_sessions: usize,
    /// Sessions at once of one client key. Default 8.
    pub max_sessions_per_key: usize,
    /// Sessions at once of one transfer user (all its keys). Default 64.
    pub max_sessions_per_user: usize,
    /// Sessions at once from one client address. Default 32.
    pub max_sessions_per_source: usize,
    /// Files one session may announce (uploads) or list (downloads). Default 1,000,000.
    pub max_files: u32,
    /// Sum of the paths one session may announce, in bytes. Default 256 MiB.
    pub max_manifest_bytes: u64,
    /// Files a session holds open at once (descriptors), whatever the number of files.
    /// Default 64.
    pub max_open_files: usize,
}

impl Default for PostAuth {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_sessions_per_key: 8,
            max_sessions_per_user: 64,
            max_sessions_per_source: 32,
            max_files: 1_000_000,
            max_manifest_bytes: 256 << 20,
            max_open_files: 64,
        }
    }
}

/// Brute-force protection: an address with `max_failures` failed authentications within
/// `window` is refused for `lockout`, before its handshake (no signature work for it). At most
/// `max_tracked` addresses are counted; past that, expired entries go first, then the oldest.
#[derive(Debug, Clone)]
pub struct AuthFailures {
    /// Failures that lock an address out. Default 10.
    pub max_failures: u32,
    /// Within this long. Default 60 s.
    pub window: Duration,
    /// Refused for this long. Default 300 s.
    pub lockout: Duration,
    /// Addresses counted at most. Default 4096.
    pub max_tracked: usize,
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_tracked: 4096,
        }
    }
}

/// One address's failed authentications.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    fn expired(&self, now: Instant, l: &AuthFailures) -> bool {
        match self.locked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.first) >= l.window,
        }
    }
}

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Take it; the guard counts it until it is set up or gone.
    Accept(SetupGuard),
    /// Ask it to prove its address first.
    Retry,
    /// Too many connections in set-up (in all, or from this source).
    Refuse(&'static str),
}

#[derive(Debug, Default)]
struct Counts {
    setup: usize,
    setup_by_source: HashMap<IpAddr, usize>,
    sessions: usize,
    sessions_by: HashMap<Holder, usize>,
}

/// Whose sessions are counted against a limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Key([u8; 32]),
    User(String),
    Source(IpAddr),
}

/// Counts connections in set-up and running sessions.
#[derive(Debug, Default)]
pub struct Gate {
    counts: Mutex<Counts>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// A connection in set-up; dropping it releases its place.
#[derive(Debug)]
pub struct SetupGuard {
    gate: Arc<Gate>,
    source: IpAddr,
}

/// A running session; dropping it releases its place.
#[derive(Debug)]
pub struct SessionGuard {
    gate: Arc<Gate>,
    holders: [Holder; 3],
}

impl Gate {
    /// Decides about a new connection from `source` (`validated`: its address is proven).
    pub fn admit(self: &Arc<Self>, source: IpAddr, validated: bool, l: &PreAuth) -> Admission {
        let mut c = self.counts.lock().expect("gate lock");
        let from_source = c.setup_by_source.get(&source).copied().unwrap_or(0);
        if c.setup >= l.max_connections {
            return Admission::Refuse("too many connections in set-up");
        }
        if from_source >= l.max_per_source {
            return Admission::Refuse("too many connections in set-up from this address");
        }
        if c.setup >= l.retry_above && !validated {
            return Admission::Retry;
        }
        c.setup += 1;
        *c.setup_by_source.entry(source).or_default() += 1;
        Admission::Accept(SetupGuard { gate: self.clone(), source })
    }

    /// Starts a session of `key` acting as `user` from `source`, if the limits allow (in all,
    /// per key, per user, per source address).
    pub fn start_session(
        self: &Arc<Self>,
        key: [u8; 32],
        user: &str,
        source: IpAddr,
        l: &PostAuth,
    ) -> Result<SessionGuard, String> {
        let mut c = self.counts.lock().expect("gate lock");
        if c.sessions >= l.max_sessions {
            return Err(format!(
                "the server is running its maximum of {} sessions",
                l.max_sessions
            ));
        }
        let holders = [Holder::Key(key), Holder::User(user.to_owned()), Holder::Source(source)];
        let limits = [
            (l.max_sessions_per_key, "this key"),
            (l.max_sessions_per_user, "this user"),
            (l.max_sessions_per_source, "this address"),
        ];
        for (h, (max, whose)) in holders.iter().zip(limits) {
            let n = c.sessions_by.get(h).copied().unwrap_or(0);
            if n >= max {
                return Err(format!("{whose} already has {n} sessions running (its limit)"));
            }
        }
        c.sessions += 1;
        for h in &holders {
            *c.sessions_by.entry(h.clone()).or_default() += 1;
        }
        Ok(SessionGuard { gate: self.clone(), holders })
    }

    /// How much longer `source` is locked out, if it is.
    pub fn locked_out(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.failures.lock().expect("failures lock");
        let until = f.get(&source)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication from `source`; returns the count when it locks the
    /// address out.
    pub fn auth_failed(&self, source: IpAddr, now: Instant, l: &AuthFailures) -> Option<u32> {
        let mut f = self.failures.lock().expect("failures lock");
        if f.get(&source).is_some_and(|e| e.expired(now, l)) {
            f.remove(&source);
        }
        if !f.contains_key(&source) && f.len() >= l.max_tracked.max(1) {
            f.retain(|_, e| !e.expired(now, l));
            if f.len() >= l.max_tracked.max(1) {
                let oldest = f.iter().min_by_key(|(_, e)| e.first).map(|(a, _)| *a);
                if let Some(a) = oldest {
                    f.remove(&a);
                }
            }
        }
        let e = f.entry(source).or_insert(Failures { count: 0, first: now, locked_until: None });
        if e.locked_until.is_some() {
            return None;
        }
        e.count += 1;
        if e.count >= l.max_failures.max(1) {
            e.locked_until = Some(now + l.lockout);
            return Some(e.count);
        }
        None
    }

    /// Connections in set-up and sessions running now.
    pub fn load(&self) -> (usize, usize) {
        let c = self.counts.lock().expect("gate lock");
        (c.setup, c.sessions)
    }
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().expect("gate lock");
        c.setup -= 1;
        if let Some(n) = c.setup_by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.setup_by_source.remove(&self.source);
            }
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().expect("gate lock");
        c.sessions -= 1;
        for h in &self.holders {
            if let Some(n) = c.sessions_by.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    c.sessions_by.remove(h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_releases() {
        let gate = Arc::new(Gate::default());
        let l =
            PreAuth { max_connections: 3, max_per_source: 2, retry_above: 1, ..PreAuth::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = match gate.admit(a, false, &l) {
            Admission::Accept(g) => g,
            x => panic!("{x:?}"),
        };
        assert!(matches!(gate.admit(a, false, &l), Admission::Retry));
        let _g2 = match gate.admit(a, true, &l) {
            Admission::Accept(g) => g,
            x => panic!("{x:?}"),
        };
        assert!(matches!(gate.admit(a, true, &l), Admission::Refuse(_)));
        let _g3 = match gate.admit(b, true, &l) {
            Admission::Accept(g) => g,
            x => panic!("{x:?}"),
        };
        assert!(matches!(gate.admit(b, true, &l), Admission::Refuse(_)));
        drop(g1);
        assert_eq!(gate.load().0, 2);
        let p = PostAuth { max_sessions_per_key: 1, ..PostAuth::default() };
        let s = gate.start_session([1; 32], "u", a, &p).unwrap();
        assert!(gate.start_session([1; 32], "u", a, &p).is_err());
        assert!(gate.start_session([2; 32], "u", a, &p).is_ok());
        drop(s);
        assert!(gate.start_session([1; 32], "u", a, &p).is_ok());
        // Per user (whatever the key) and per source address (whatever the user).
        let gate = Arc::new(Gate::default());
        let p = PostAuth { max_sessions_per_user: 2, max_sessions_per_source: 3, ..p };
        let _k1 = gate.start_session([1; 32], "alice", a, &p).unwrap();
        let _k2 = gate.start_session([2; 32], "alice", b, &p).unwrap();
        let e = gate.start_session([3; 32], "alice", b, &p).unwrap_err();
        assert!(e.contains("this user"), "{e}");
        let _b1 = gate.start_session([4; 32], "bob", a, &p).unwrap();
        let _b2 = gate.start_session([5; 32], "carol", a, &p).unwrap();
        let e = gate.start_session([6; 32], "dave", a, &p).unwrap_err();
        assert!(e.contains("this address"), "{e}");
        drop((_k1, _k2, _b1, _b2));
        assert_eq!(gate.load().1, 0);
        assert!(gate.counts.lock().unwrap().sessions_by.is_empty());
    }

    #[test]
    fn failed_authentications_lock_an_address_out_for_a_while() {
        let gate = Gate::default();
        let l = AuthFailures {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_tracked: 100,
        };
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(gate.auth_failed(a, t0, &l), None);
        assert_eq!(gate.auth_failed(a, t0, &l), None);
        assert_eq!(gate.locked_out(a, t0), None);
        // Failures older than the window no longer count.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(gate.auth_failed(a, t1, &l), None);
        assert_eq!(gate.auth_failed(a, t1, &l), None);
        assert_eq!(gate.auth_failed(a, t1, &l), Some(3));
        assert_eq!(gate.locked_out(a, t1), Some(Duration::from_secs(300)));
        assert_eq!(gate.locked_out(b, t1), None, "another address is not affected");
        assert_eq!(gate.auth_failed(a, t1, &l), None, "told once");
        let t2 = t1 + Duration::from_secs(300);
        assert_eq!(gate.locked_out(a, t2), None, "the lockout ends");
        // Memory stays bounded whatever the number of addresses; a lockout in progress
        // survives a flood of new ones for a while (expired entries go first).
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            gate.auth_failed(ip, t2, &l);
            assert!(gate.failures.lock().unwrap().len() <= 100);
        }
    }
}
