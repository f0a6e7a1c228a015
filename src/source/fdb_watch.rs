//! Hands the FDB collector the kernel's bridge FDB announcements: a
//! non-blocking rtnetlink socket in the RTNLGRP_NEIGH multicast group whose
//! AF_BRIDGE messages (RTM_NEWNEIGH / RTM_DELNEIGH) are passed on raw; the
//! group's ARP/NDP messages are skipped by their family byte, undecoded.
//!
//! Why: a full AF_BRIDGE RTM_GETNEIGH dump makes the kernel walk the whole
//! FDB once per interface (`br_fdb_dump` is called with each port as the
//! filter device), O(ports × entries): most of the sampler's kernel time at
//! 500 vNICs. The bridge announces every entry it creates, moves, changes
//! or deletes (learning, ageing, flush, port removal, `bridge fdb
//! add/replace/del`); only refreshes of an entry's timestamp go unannounced.

use netlink_sys::Socket;

const RTNLGRP_NEIGH: u32 = 3;
const AF_BRIDGE: u8 = 7;
/// What the socket may queue between two samples: an FDB flush on a
/// 1000-port bridge is ~1000 messages of ~1 KiB (skb truesize). More than
/// that is ENOBUFS, after which the collector dumps in full.
const RCVBUF_BYTES: usize = 2 << 20;

pub struct FdbWatch {
    socket: Socket,
    buf: Vec<u8>,
}

/// What one `drain` saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// AF_BRIDGE messages handed to the callback.
    pub messages: usize,
    /// The kernel dropped announcements (ENOBUFS): the caller's picture is
    /// incomplete until its next full dump.
    pub lost: bool,
}

impl FdbWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> std::io::Result<FdbWatch> {
        let socket = super::link_watch::subscribe(RTNLGRP_NEIGH)?;
        // Best effort: without it, a burst is ENOBUFS, which is handled.
        let _ = socket.set_rx_buf_sz(RCVBUF_BYTES);
        Ok(FdbWatch {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Reads everything queued, handing each AF_BRIDGE message's type and
    /// payload (after the netlink header) to `f`, in the kernel's order.
    pub fn drain(&mut self, f: &mut dyn FnMut(u16, &[u8])) -> std::io::Result<Drained> {
        let mut d = Drained::default();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return Ok(d),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(d),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    d.lost = true;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            d.messages += for_each_bridge_message(&self.buf[..n], f);
        }
    }
}

/// Walks the netlink messages of one datagram, calling `f` for the
/// AF_BRIDGE ones; returns how many. By hand (16-byte headers, as
/// source::netlink does) so the ARP/NDP traffic of the group costs a
/// byte comparison, not a decode.
pub fn for_each_bridge_message(buf: &[u8], f: &mut dyn FnMut(u16, &[u8])) -> usize {
    let mut count = 0;
    let mut off = 0;
    while off + 16 <= buf.len() {
        let b = &buf[off..];
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            break;
        }
        let payload = &b[16..len];
        if payload.first() == Some(&AF_BRIDGE) {
            f(ty, payload);
            count += 1;
        }
        off += (len + 3) & !3;
    }
    count
}
