//! The nf_tables ruleset generation id (NFT_MSG_GETGEN on NETLINK_NETFILTER).
//! It changes on every ruleset commit — nft, iptables-nft, ebtables-nft — so
//! it fingerprints the ruleset for the cost of one 20-byte request and a
//! ~48-byte reply, without dumping rules every second (which would contend
//! with other tools for the nfnl/xtables locks).
//!
//! Written by hand on netlink-sys: no maintained crate exposes GETGEN
//! cheaply. The `nftables` crate runs `nft -j` (a process per sample);
//! `nftnl` binds the C libnftnl/libmnl; `rustables` is pure Rust but
//! GPL-3.0 (we are Apache-2.0) and built around table/chain/rule batches.
//! The message is a netlink header and a 4-byte nfgenmsg; the answer is one
//! attribute.
//!
//! The socket belongs to the network namespace of the thread that opens it:
//! open it after entering the namespace (setns is per thread).

use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The GETGEN request for sequence number `seq`.
pub fn request(seq: u32) -> [u8; 20] {
    let mut req = [0u8; 20];
    req[0..4].copy_from_slice(&20u32.to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0 (the kernel), then nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
    req
}

/// What one netlink datagram says about our request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The generation id.
    GenId(u32),
    /// nf_tables answered NEWGEN without an id, or not at all in this
    /// kernel/namespace (ENOENT, EOPNOTSUPP, EPROTONOSUPPORT).
    Unavailable,
    /// Another errno from the kernel.
    Errno(i32),
    /// Nothing for `seq` in this datagram (a stale reply): read on.
    NotYet,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one received datagram (possibly several messages). Pure, so the
/// decoding is tested on a captured reply without a socket.
pub fn parse_reply(b: &[u8], seq: u32) -> Result<Reply, &'static str> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, off).ok_or("short header")? as usize;
        let ty = u16_at(b, off + 4).ok_or("short header")?;
        let msg_seq = u32_at(b, off + 8).ok_or("short header")?;
        if len < NLMSG_HDRLEN || off + len > b.len() {
            return Err("netlink message length out of bounds");
        }
        let msg = &b[off..off + len];
        off += (len + 3) & !3;
        if msg_seq != seq {
            continue;
        }
        if ty == NLMSG_ERROR {
            let code = u32_at(msg, NLMSG_HDRLEN).ok_or("short NLMSG_ERROR")? as i32;
            match code.checked_neg() {
                // An ACK (error 0): the answer itself is another message.
                Some(0) => continue,
                Some(libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT) => {
                    return Ok(Reply::Unavailable)
                }
                Some(errno) => return Ok(Reply::Errno(errno)),
                None => return Err("NLMSG_ERROR code out of range"),
            }
        }
        if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
            continue;
        }
        let mut a = NLMSG_HDRLEN + NFGENMSG_LEN;
        while let (Some(alen), Some(aty)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
            let alen = alen as usize;
            if alen < 4 || a + alen > msg.len() {
                return Err("attribute length out of bounds");
            }
            // Low 14 bits are the type; the top two are nested/byte-order flags.
            if aty & 0x3fff == NFTA_GEN_ID {
                let v = msg.get(a + 4..a + 8).ok_or("short NFTA_GEN_ID")?;
                return Ok(Reply::GenId(u32::from_be_bytes(
                    v.try_into().map_err(|_| "short")?,
                )));
            }
            a += (alen + 3) & !3;
        }
        return Ok(Reply::Unavailable);
    }
    Ok(Reply::NotYet)
}

pub struct NfGen {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfGen {
    /// Opens a socket in the calling thread's network namespace. A kernel
    /// without nfnetlink fails with EPROTONOSUPPORT: see [`is_unavailable`].
    pub fn new(timeout: Duration) -> std::io::Result<NfGen> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        super::netlink::set_recv_timeout(&socket, timeout)?;
        Ok(NfGen {
            socket,
            seq: 0,
            buf: vec![0; 4096],
        })
    }

    /// Ok(None) when nf_tables is not available in this kernel/namespace.
    pub fn genid(&mut self) -> std::io::Result<Option<u32>> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&request(self.seq), 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let reply = parse_reply(&self.buf[..n], self.seq)
                .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))?;
            match reply {
                Reply::GenId(g) => return Ok(Some(g)),
                Reply::Unavailable => return Ok(None),
                Reply::Errno(e) => return Err(std::io::Error::from_raw_os_error(e)),
                Reply::NotYet => continue,
            }
        }
    }
}

/// The kernel has no nfnetlink at all: nf_tables is absent, which is normal.
pub fn is_unavailable(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EPROTONOSUPPORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NEWGEN reply captured on this machine (root namespace, 6.18) with a
    /// raw NETLINK_NETFILTER socket from python3: genid 1, pid and process
    /// name of the requester (see tests/fixtures/PROVENANCE.md).
    const CAPTURED: &str = "300000000f0a0000070000003923000000000001080001000000000108000200000023390c000300707974686f6e3300";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn captured_reply_decodes() {
        let b = hex(CAPTURED);
        assert_eq!(parse_reply(&b, 7), Ok(Reply::GenId(1)));
        assert_eq!(
            parse_reply(&b, 8),
            Ok(Reply::NotYet),
            "stale seq is skipped"
        );
    }

    #[test]
    fn errors_and_garbage() {
        // NLMSG_ERROR with -ENOENT for seq 3.
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&0u16.to_ne_bytes());
        e.extend_from_slice(&3u32.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        e.extend_from_slice(&request(3)[..16]);
        assert_eq!(parse_reply(&e, 3), Ok(Reply::Unavailable));
        e[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_reply(&e, 3), Ok(Reply::Errno(libc::EPERM)));
        // Truncated captures never panic.
        let b = hex(CAPTURED);
        for cut in 0..b.len() {
            let _ = parse_reply(&b[..cut], 7);
        }
        assert!(parse_reply(&b[..30], 7).is_err());
    }

    #[test]
    fn request_layout() {
        let r = request(0x01020304);
        assert_eq!(u32_at(&r, 0), Some(20));
        assert_eq!(u16_at(&r, 4), Some(0x0a10));
        assert_eq!(u32_at(&r, 8), Some(0x01020304));
    }
}
