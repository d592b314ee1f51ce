//! OpenSSH `authorized_keys` files: the ed25519 keys a server accepts, with the options that
//! restrict them honoured as sshd honours them.
//!
//! A line is `[OPTIONS] KEYTYPE BASE64 [COMMENT]`. Of sshd's options, those that restrict a key
//! are enforced: `from="PATTERN-LIST"` (the client's address must match: `*`/`?` wildcards,
//! `ADDR/BITS` CIDR blocks, `!` negation; host names are not looked up, as with sshd's default
//! `UseDNS no`), `expiry-time="YYYYMMDD[HHMM[SS]][Z]"` (the key is refused from then on; local
//! time unless `Z`), `restrict` and the `no-*` options for features Ferry does not have
//! (`no-agent-forwarding`, `no-port-forwarding`, `no-pty`, `no-user-rc`,
//! `no-X11-forwarding`), which therefore already hold. Any other option (`command=`,
//! `permitopen=`, `environment=`, `principals=`, `cert-authority`, `tunnel=`, the options that
//! re-enable features after `restrict`, ...) makes Ferry refuse the key, with a message naming
//! the option: it is never silently accepted. Lines with other key types are skipped.

use std::net::IpAddr;
use std::path::Path;

/// Largest authorized_keys file read.
const MAX_FILE: u64 = 4 << 20;

/// One usable key with its restrictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The ed25519 public key.
    pub key: [u8; 32],
    /// `from=`: patterns the client's address must match.
    from: Option<String>,
    /// `expiry-time=`: Unix time from which the key is refused.
    expires: Option<i64>,
    /// Line number, for messages.
    line: usize,
}

/// A line whose key is refused because of an option Ferry cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// Line number.
    pub line: usize,
    /// The ed25519 key, if the line held one.
    pub key: Option<[u8; 32]>,
    /// Why.
    pub reason: String,
}

/// A parsed authorized_keys file.
#[derive(Debug, Default, Clone)]
pub struct AuthorizedKeys {
    pub keys: Vec<AuthorizedKey>,
    pub refused: Vec<RefusedLine>,
}

/// Why a key may not be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not listed.
    #[error("the key is not in the authorized keys file")]
    NotListed,
    /// Listed with an option Ferry refuses.
    #[error("line {line} of the authorized keys file: {reason}")]
    Refused { line: usize, reason: String },
    /// `from=` does not match the client's address.
    #[error("line {line} of the authorized keys file allows this key only from={from:?}")]
    From { line: usize, from: String },
    /// `expiry-time=` has passed.
    #[error("line {line} of the authorized keys file: the key expired")]
    Expired { line: usize },
}

impl AuthorizedKeys {
    /// Reads and parses `path`. A line that cannot be parsed is an error (naming the line).
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        f.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_FILE {
            return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
        }
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of an authorized_keys file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (options, rest) = split_options(l).map_err(|e| format!("line {line}: {e}"))?;
            let mut fields = rest.split_whitespace();
            let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
                return Err(format!("line {line}: expected KEYTYPE BASE64"));
            };
            if kind != "ssh-ed25519" {
                continue;
            }
            let public = ssh_key::PublicKey::from_openssh(&format!("{kind} {blob}"))
                .map_err(|e| format!("line {line}: {e}"))?;
            let Some(key) = public.key_data().ed25519().map(|k| k.0) else { continue };
            match apply_options(&options) {
                Ok((from, expires)) => out.keys.push(AuthorizedKey { key, from, expires, line }),
                Err(reason) => out.refused.push(RefusedLine { line, key: Some(key), reason }),
            }
        }
        Ok(out)
    }

    /// Whether `key` may authenticate from `peer` at Unix time `now`.
    pub fn check(&self, key: &[u8; 32], peer: IpAddr, now: i64) -> Result<(), Denied> {
        let mut denial = None;
        for k in self.keys.iter().filter(|k| &k.key == key) {
            match k.permits(peer, now) {
                Ok(()) => return Ok(()),
                Err(d) => denial = denial.or(Some(d)),
            }
        }
        if let Some(d) = denial {
            return Err(d);
        }
        match self.refused.iter().find(|r| r.key.as_ref() == Some(key)) {
            Some(r) => Err(Denied::Refused { line: r.line, reason: r.reason.clone() }),
            None => Err(Denied::NotListed),
        }
    }
}

impl AuthorizedKey {
    fn permits(&self, peer: IpAddr, now: i64) -> Result<(), Denied> {
        if let Some(t) = self.expires
            && now >= t
        {
            return Err(Denied::Expired { line: self.line });
        }
        if let Some(from) = &self.from
            && !from_matches(from, peer)
        {
            return Err(Denied::From { line: self.line, from: from.clone() });
        }
        Ok(())
    }
}

/// One option: its lower-case name and its value, if it has one (`name="value"`).
type KeyOption = (String, Option<String>);

/// Splits the options field off a line: options run to the first space outside double quotes.
/// Returns the options (name, value) and the rest of the line.
fn split_options(line: &str) -> Result<(Vec<KeyOption>, &str), String> {
    let first = line.split_whitespace().next().unwrap_or("");
    if is_key_type(first) {
        return Ok((Vec::new(), line));
    }
    let mut options = Vec::new();
    let mut name = String::new();
    let mut value: Option<String> = None;
    let mut in_quotes = false;
    let mut chars = line.char_indices();
    let end = loop {
        let Some((i, c)) = chars.next() else { return Err("no key after the options".into()) };
        match (c, in_quotes) {
            ('"', _) => {
                in_quotes = !in_quotes;
                if in_quotes && value.is_none() {
                    return Err(format!("quote outside an option value in {name:?}"));
                }
            }
            ('\\', true) => {
                if let Some((_, n)) = chars.next() {
                    value.get_or_insert_with(String::new).push(n);
                }
            }
            ('=', false) if value.is_none() => value = Some(String::new()),
            (',', false) | (' ' | '\t', false) => {
                if name.is_empty() {
                    return Err("empty option".into());
                }
                options.push((std::mem::take(&mut name).to_ascii_lowercase(), value.take()));
                if c != ',' {
                    break i;
                }
            }
            (c, _) => match &mut value {
                Some(v) => v.push(c),
                None => name.push(c),
            },
        }
    };
    if in_quotes {
        return Err("unterminated quote in the options".into());
    }
    Ok((options, line[end..].trim_start()))
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-sha2-") || s.starts_with("sk-")
}

/// The options Ferry honours; anything else refuses the key.
fn apply_options(
    options: &[(String, Option<String>)],
) -> Result<(Option<String>, Option<i64>), String> {
    const ALREADY_TRUE: [&str; 6] = [
        "restrict",
        "no-agent-forwarding",
        "no-port-forwarding",
        "no-pty",
        "no-user-rc",
        "no-x11-forwarding",
    ];
    let mut from = None;
    let mut expires: Option<i64> = None;
    for (name, value) in options {
        match (name.as_str(), value) {
            (n, None) if ALREADY_TRUE.contains(&n) => {}
            ("from", Some(v)) => {
                if from.is_some() {
                    return Err("from= is given twice".into());
                }
                from = Some(v.clone());
            }
            ("expiry-time", Some(v)) => {
                let t = parse_expiry(v)
                    .ok_or_else(|| format!("expiry-time={v:?} is not YYYYMMDD[HHMM[SS]][Z]"))?;
                // Like sshd, the earliest of several expiry times wins.
                expires = Some(expires.map_or(t, |e| e.min(t)));
            }
            (n, _) => {
                return Err(format!(
                    "option {n:?} is not supported by Ferry, so the key is refused (remove the \
                     option, or give Ferry its own authorized_keys file)"
                ));
            }
        }
    }
    Ok((from, expires))
}

/// `YYYYMMDD[HHMM[SS]][Z]` as Unix time (local time unless `Z`).
fn parse_expiry(s: &str) -> Option<i64> {
    let (digits, utc) = match s.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (s, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).map_or(Some(0), |d| d.parse::<i64>().ok());
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, sec) = (n(8..10)?, n(10..12)?, n(12..14)?);
    let dt = jiff::civil::DateTime::new(
        i16::try_from(y).ok()?,
        i8::try_from(mo).ok()?,
        i8::try_from(d).ok()?,
        i8::try_from(h).ok()?,
        i8::try_from(mi).ok()?,
        i8::try_from(sec).ok()?,
        0,
    )
    .ok()?;
    let tz = if utc { jiff::tz::TimeZone::UTC } else { jiff::tz::TimeZone::system() };
    Some(dt.to_zoned(tz).ok()?.timestamp().as_second())
}

/// sshd's `from=` semantics on an address: a negated match refuses, else any positive match
/// allows.
fn from_matches(list: &str, peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let text = peer.to_string();
    let mut allowed = false;
    for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, p) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = match p.split_once('/') {
            Some((addr, bits)) => cidr_matches(addr, bits, peer),
            None => wildcard(p.as_bytes(), text.as_bytes()),
        };
        if hit && negated {
            return false;
        }
        allowed |= hit;
    }
    allowed
}

fn cidr_matches(addr: &str, bits: &str, peer: IpAddr) -> bool {
    let (Ok(net), Ok(bits)) = (addr.parse::<IpAddr>(), bits.parse::<u32>()) else { return false };
    match (net, peer) {
        (IpAddr::V4(n), IpAddr::V4(p)) if bits <= 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(n) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(p)) if bits <= 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(n) & mask == u128::from(p) & mask
        }
        _ => false,
    }
}

/// `*` (any run) and `?` (any one character) matching, case-insensitive like sshd.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&s[si]) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn parse(options: &str) -> AuthorizedKeys {
        AuthorizedKeys::parse(&format!("# c\n\n{options} {KEY} me@host\n")).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_keys_and_other_types() {
        let k = AuthorizedKeys::parse(&format!("ssh-rsa AAAAB3Nza x\n{KEY}\n")).unwrap();
        assert_eq!(k.keys.len(), 1);
        assert!(k.check(&k.keys[0].key.clone(), ip("10.0.0.1"), 0).is_ok());
        assert_eq!(k.check(&[0; 32], ip("10.0.0.1"), 0), Err(Denied::NotListed));
    }

    #[test]
    fn from_restricts_by_address() {
        let k = parse(r#"restrict,from="10.0.0.*,!10.0.0.66,192.168.0.0/16,2001:db8::/32""#);
        let key = k.keys[0].key;
        for ok in ["10.0.0.1", "192.168.7.7", "::ffff:10.0.0.9", "2001:db8::1"] {
            assert!(k.check(&key, ip(ok), 0).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.66", "10.0.1.1", "127.0.0.1", "2001:db9::1"] {
            assert!(
                matches!(k.check(&key, ip(bad), 0), Err(Denied::From { line: 3, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_time() {
        let k = parse(r#"expiry-time="20300101Z",no-pty"#);
        let key = k.keys[0].key;
        let t2030 = 1_893_456_000;
        assert!(k.check(&key, ip("1.2.3.4"), t2030 - 1).is_ok());
        assert_eq!(k.check(&key, ip("1.2.3.4"), t2030), Err(Denied::Expired { line: 3 }));
        assert_eq!(parse_expiry("203001011230Z"), Some(t2030 + 12 * 3600 + 30 * 60));
        assert_eq!(parse_expiry("20300101123005Z"), Some(t2030 + 12 * 3600 + 30 * 60 + 5));
        for bad in ["2030", "2030010", "20301301Z", "abcdefgh"] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn other_options_refuse_the_key_by_name() {
        for opt in [
            r#"command="/bin/sh""#,
            "cert-authority",
            r#"permitopen="h:1""#,
            "pty",
            "port-forwarding",
        ] {
            let k = parse(opt);
            assert!(k.keys.is_empty(), "{opt}");
            let key = k.refused[0].key.unwrap();
            let e = k.check(&key, ip("1.2.3.4"), 0).unwrap_err();
            let name = opt.split('=').next().unwrap();
            assert!(e.to_string().contains(name), "{opt}: {e}");
        }
        // A quoted value may hold spaces and commas.
        let k = parse(r#"from="10.0.0.1, 10.0.0.2",no-x11-forwarding"#);
        assert!(k.check(&k.keys[0].key.clone(), ip("10.0.0.2"), 0).is_ok());
        assert!(AuthorizedKeys::parse(r#"from="10.0.0.1 ssh-ed25519 AAAA"#).is_err());
    }
}
