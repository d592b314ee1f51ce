//! The account `ferry serve` runs as: started as root, it becomes the account its
//! configuration names (`run_as`, or `--run-as` in the flag mode) before it opens its state,
//! binds a socket or serves anyone.
//!
//! Why before binding rather than after: every session's data socket shares the listening port
//! (`SO_REUSEPORT`), and Linux lets only sockets of one effective uid share a port, so the
//! listening socket must belong to the account that will bind the data sockets. Ports below
//! 1024 are given to that account by `CAP_NET_BIND_SERVICE` (the systemd unit's
//! `AmbientCapabilities`), not by staying root.

use crate::keys::passwd;

/// An account from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Its home directory (where its default state directory is).
    pub(crate) home: std::path::PathBuf,
}

/// The account called `name`; not root.
pub(crate) fn lookup(name: &str) -> Result<Account, String> {
    let e = passwd()
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| format!("there is no account {name:?} in /etc/passwd"))?;
    if e.uid == 0 {
        return Err(format!("{name:?} is root; name an unprivileged account"));
    }
    Ok(Account { name: e.name, uid: e.uid, gid: e.gid, home: e.home })
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Becomes `account` for good: supplementary groups just its group, then real, effective and
/// saved gid and uid. The process must have a single thread (the credentials are set with the
/// per-thread system calls, which are process-wide only then); that is checked, and so is the
/// result (root cannot be regained).
pub(crate) fn become_account(account: &Account) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(0);
    if threads != 1 {
        return Err(format!("cannot drop privileges safely: the process has {threads} threads"));
    }
    let (u, g) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    set_thread_groups(&[g])
        .and_then(|()| set_thread_res_gid(g, g, g))
        .and_then(|()| set_thread_res_uid(u, u, u))
        .map_err(|e| format!("cannot become {}: {e}", account.name))?;
    if rustix::process::geteuid() != u
        || rustix::process::getuid() != u
        || set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok()
    {
        return Err(format!("could not drop privileges to {}", account.name));
    }
    Ok(())
}
