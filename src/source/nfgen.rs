//! The nf_tables ruleset generation id (NFT_MSG_GETGEN on NETLINK_NETFILTER):
//! it changes on every ruleset commit — nft, iptables-nft, ebtables-nft —
//! so it fingerprints the ruleset for the cost of one tiny request, without
//! dumping rules or taking the xtables lock every second. Written by hand:
//! no maintained crate exposes GETGEN without pulling in libnftnl.

use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

pub struct NfGen {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfGen {
    pub fn new() -> std::io::Result<NfGen> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        super::netlink::set_recv_timeout(&socket, Duration::from_millis(500))?;
        Ok(NfGen {
            socket,
            seq: 0,
            buf: vec![0; 4096],
        })
    }

    /// Ok(None) when nf_tables is not available in this kernel/namespace.
    pub fn genid(&mut self) -> std::io::Result<Option<u32>> {
        self.seq = self.seq.wrapping_add(1);
        // nlmsghdr (16 bytes) + nfgenmsg (family, version, res_id).
        let mut req = Vec::with_capacity(20);
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
        req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        self.socket.send(&req, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let b = &self.buf[..n];
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(b[off + 4..off + 6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(b[off + 8..off + 12].try_into().expect("4 bytes"));
                if len < 16 || off + len > n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let msg = &b[off..off + len];
                off += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    let code = i32::from_ne_bytes(msg[16..20].try_into().expect("4 bytes"));
                    if code == 0 {
                        continue;
                    }
                    let e = std::io::Error::from_raw_os_error(-code);
                    return match -code {
                        libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT => Ok(None),
                        _ => Err(e),
                    };
                }
                if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                    // attributes after nlmsghdr (16) + nfgenmsg (4)
                    let mut a = 20;
                    while a + 4 <= msg.len() {
                        let alen =
                            u16::from_ne_bytes(msg[a..a + 2].try_into().expect("2 bytes")) as usize;
                        let aty =
                            u16::from_ne_bytes(msg[a + 2..a + 4].try_into().expect("2 bytes"))
                                & 0x3fff;
                        if alen < 4 || a + alen > msg.len() {
                            break;
                        }
                        if aty == NFTA_GEN_ID && alen >= 8 {
                            return Ok(Some(u32::from_be_bytes(
                                msg[a + 4..a + 8].try_into().expect("4 bytes"),
                            )));
                        }
                        a += (alen + 3) & !3;
                    }
                    return Ok(None);
                }
            }
        }
    }
}
