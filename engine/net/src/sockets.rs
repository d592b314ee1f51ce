//! UDP sockets: the server's one listening port, shared by its sessions' data sockets.

/// The server's listening socket: UDP on `addr`, with `SO_REUSEPORT` so that the sessions' data
/// sockets ([`data_port_socket`]) can share its port. Linux delivers a datagram to the socket
/// whose connected peer address matches its source, and to the unconnected (QUIC) socket
/// otherwise.
///
/// `SO_REUSEPORT` would also let a second server of the same user start on the same port and
/// silently take half the new connections, so the port is first claimed without it: if anything
/// holds it, this fails with "address in use" like any server.
pub fn listening_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let probe = reuseport_socket(addr, false)?;
    let addr = probe.local_addr()?; // a port of 0 becomes the port the kernel chose
    drop(probe);
    reuseport_socket(addr, true)
}

/// A data socket on the server's listening address and port (see [`listening_socket`]).
pub fn data_port_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    reuseport_socket(addr, true)
}

fn reuseport_socket(
    addr: std::net::SocketAddr,
    reuse: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = socket(family, SocketType::DGRAM, None)?;
    if reuse {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    if addr.is_ipv6() {
        // Like std's bind: a wildcard IPv6 address also takes IPv4 (mapped) peers.
        let _ = sockopt::set_ipv6_v6only(&fd, false);
    }
    bind(&fd, &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Raises the soft limit on open files to the hard limit: every session holds a few
/// descriptors (its sockets, a bounded number of files), and a server runs many sessions.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// After a failed connection: whether the server's host says its UDP port is closed (an ICMP
/// port-unreachable, seen as a refused connection on a connected socket), as opposed to no
/// answer at all. A single one-byte datagram is sent, which no QUIC server accepts.
pub fn port_refused(local_ip: std::net::IpAddr, server: std::net::SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let s = std::net::UdpSocket::bind(std::net::SocketAddr::new(local_ip, 0))?;
        s.connect(server)?;
        s.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
        s.send(&[0])?;
        let mut buf = [0u8; 16];
        Ok(matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
    };
    probe().unwrap_or(false)
}
