//! A small synchronous rtnetlink client: send one dump request, collect
//! every reply until NLMSG_DONE. Messages are built and parsed by
//! netlink-packet-route; this file only moves bytes.
//!
//! Synchronous on purpose: the sampler is a plain thread, a dump of 1000
//! links is a few hundred µs, and a receive timeout (SO_RCVTIMEO) bounds
//! what a stuck kernel can cost. The receive buffer is reused across dumps.

use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::collect::CollectError;

pub struct RouteSocket {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// SO_RCVTIMEO, kept to say in a timeout error how long we waited.
    timeout_ms: u64,
}

fn err(what: &str, e: impl std::fmt::Display) -> CollectError {
    CollectError::Netlink {
        what: what.to_string(),
        msg: e.to_string(),
    }
}

/// Sets SO_RCVTIMEO; netlink-sys has no setter for it.
pub fn set_recv_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd, valid pointer to a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl RouteSocket {
    pub fn new(timeout: Duration) -> Result<RouteSocket, CollectError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("socket", e))?;
        socket.bind_auto().map_err(|e| err("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", e))?;
        set_recv_timeout(&socket, timeout).map_err(|e| err("SO_RCVTIMEO", e))?;
        Ok(RouteSocket {
            socket,
            buf: vec![0; 64 * 1024],
            seq: 0,
            timeout_ms: timeout.as_millis() as u64,
        })
    }

    /// The socket in `slot`, opened on first use (and again after a
    /// collector dropped it on error: a timed-out socket may hold stale replies).
    pub fn ensure(
        slot: &mut Option<RouteSocket>,
        timeout: Duration,
    ) -> Result<&mut RouteSocket, CollectError> {
        if slot.is_none() {
            *slot = Some(RouteSocket::new(timeout)?);
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// Sends `msg` as a dump request and returns every reply message.
    /// An interrupted dump (NLM_F_DUMP_INTR: the table changed meanwhile) is
    /// retried once; its partial result is returned if it happens again.
    pub fn dump(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, CollectError> {
        use netlink_packet_core::NetlinkDeserializable;
        let out = std::cell::RefCell::new(Vec::new());
        let mut decode_err = None;
        self.dump_raw(
            what,
            msg,
            &mut || out.borrow_mut().clear(),
            &mut |ty, payload| {
                let mut h = NetlinkHeader::default();
                h.message_type = ty;
                match RouteNetlinkMessage::deserialize(&h, payload) {
                    Ok(m) => out.borrow_mut().push(m),
                    Err(e) => decode_err = Some(format!("decode message type {ty}: {e}")),
                }
            },
        )?;
        if let Some(e) = decode_err {
            return Err(err(what, e));
        }
        Ok(out.into_inner())
    }

    /// Like `dump`, but hands each reply's raw payload (after the netlink
    /// header) to `f` instead of decoding it, so a caller can decode only
    /// the attributes it needs. Retries an interrupted dump once (calling
    /// `f` again for the second pass: `reset` is called before each pass).
    pub fn dump_raw(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        reset: &mut dyn FnMut(),
        f: &mut dyn FnMut(u16, &[u8]),
    ) -> Result<(), CollectError> {
        reset();
        if self.dump_raw_once(what, msg.clone(), f)? {
            reset();
            self.dump_raw_once(what, msg, f)?;
        }
        Ok(())
    }

    fn send_request(&mut self, what: &str, msg: RouteNetlinkMessage) -> Result<(), CollectError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| err(what, format!("send: {e}")))?;
        Ok(())
    }

    fn dump_raw_once(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        f: &mut dyn FnMut(u16, &[u8]),
    ) -> Result<bool, CollectError> {
        const NLMSG_ERROR: u16 = 2;
        const NLMSG_DONE: u16 = 3;
        self.send_request(what, msg)?;
        let mut interrupted = false;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(CollectError::Timeout {
                        what: format!("netlink {what} dump"),
                        ms: self.timeout_ms,
                    })
                }
                Err(e) => return Err(err(what, format!("recv: {e}"))),
            };
            let mut off = 0;
            while off + 16 <= n {
                let b = &self.buf[off..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < 16 || len > b.len() {
                    return Err(err(what, format!("malformed message at offset {off}")));
                }
                let payload = &b[16..len];
                off += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match ty {
                    NLMSG_DONE => return Ok(interrupted),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(0);
                        if code != 0 {
                            return Err(err(what, std::io::Error::from_raw_os_error(-code)));
                        }
                        return Ok(interrupted);
                    }
                    _ => f(ty, payload),
                }
            }
        }
    }
}

/// Formats a MAC address as the kernel tools do ("52:54:00:0a:0b:0c").
/// By hand, not `format!`: it runs for every link and FDB entry every second.
pub fn mac_string(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_string_matches_ip_link() {
        assert_eq!(
            super::mac_string(&[0x52, 0x54, 0x00, 0x0a, 0xbc, 0xff]),
            "52:54:00:0a:bc:ff"
        );
        assert_eq!(super::mac_string(&[]), "");
    }
}
