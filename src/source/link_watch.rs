//! Tells the links collector whether any link changed since it last looked:
//! a non-blocking rtnetlink socket in the RTNLGRP_LINK multicast group that
//! is only drained, never decoded.
//!
//! Why: a full link dump costs the kernel `rtnl_fill_ifinfo` for every
//! interface (≈ 1.9 KB each with the per-family configuration; 8.5 ms of CPU
//! for 500 vNICs here), while the counters alone (RTM_GETSTATS) cost 0.5 ms.
//! Everything in a link message except the counters is announced by the
//! kernel when it changes (state, carrier, MTU, MAC, master, port state and
//! flags), so the collector dumps in full only after an announcement (or a
//! lost one) and reads counters otherwise.

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

const RTNLGRP_LINK: u32 = 1;

pub struct LinkWatch {
    socket: Socket,
    buf: Vec<u8>,
}

/// A non-blocking rtnetlink socket in multicast `group`, in the calling
/// thread's network namespace (the link and FDB watches).
pub(crate) fn subscribe(group: u32) -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(group)?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

impl LinkWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> std::io::Result<LinkWatch> {
        let socket = subscribe(RTNLGRP_LINK)?;
        Ok(LinkWatch {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Drains what arrived; true when anything did, or when the kernel
    /// dropped announcements (ENOBUFS) — either way a full dump is due.
    pub fn changed(&mut self) -> std::io::Result<bool> {
        let mut changed = false;
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return Ok(changed),
                Ok(_) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(changed),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
