//! The in-kernel filter: control-plane traffic plus a sampled share of
//! everything else.
//!
//! The control-plane part is a libpcap expression (configurable), compiled
//! by libpcap against the live handle so that VLAN tests use the kernel's
//! ancillary loads (the tag is usually offloaded out of the frame). The
//! sampled share needs a random number, which classic BPF has
//! (`ld rand`, SKF_AD_RANDOM, Linux ≥ 3.14) but libpcap's language does not.
//! So the compiled program is rewritten here: every "reject" (`ret #0`)
//! becomes a jump to a short tail that accepts when a random u32 falls under
//! `share × 2³²`. The result is attached with SO_ATTACH_FILTER on pcap's own
//! socket. Sampling in userspace instead would make the kernel copy every
//! frame of a 10 Gbit/s bridge into the capture ring — the cost the filter
//! exists to avoid.

/// What explains a lost network: ARP/RARP, DHCP (v4, v6), ICMP/ICMPv6 (ND,
/// RA, MLD behind a hop-by-hop header), IEEE link-local control frames
/// (01:80:c2:00:00:0x: STP, LACP, LLDP, 802.1X) and LLDP/slow protocols by
/// ethertype, TCP SYN/FIN/RST (IPv4, and IPv6 without extension headers);
/// untagged or in one VLAN tag.
pub fn control_plane_expr() -> String {
    let cp = "arp or rarp or icmp or icmp6 \
        or (udp and (port 67 or port 68 or port 546 or port 547)) \
        or (tcp and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0) \
        or (ip6 and ip6[6] = 6 and ip6[53] & 7 != 0) \
        or (ip6 and ip6[6] = 0 and ip6[40] = 58) \
        or ether proto 0x88cc or ether proto 0x8809 \
        or (ether[0:4] = 0x0180c200 and ether[4:2] & 0xfff0 = 0)";
    format!("({cp}) or (vlan and ({cp}))")
}

/// One classic BPF instruction (struct sock_filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// linux/filter.h, linux/bpf_common.h
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_RANDOM: i32 = 56;
/// The kernel's limit on a classic program (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "filter program has {0} instructions with the sampling tail (the kernel takes {MAX_INSNS})"
    )]
    TooLong(usize),
    #[error("SO_ATTACH_FILTER on the capture socket of {iface}: {source}")]
    Attach {
        iface: String,
        source: std::io::Error,
    },
}

/// `control` plus the sampled share of everything it rejects. `share` ≤ 0
/// returns the program unchanged; ≥ 1 accepts everything.
pub fn with_sampling(control: &[Insn], share: f64, snaplen: u32) -> Result<Vec<Insn>, FilterError> {
    if share <= 0.0 {
        return Ok(control.to_vec());
    }
    let accept = Insn {
        code: BPF_RET | BPF_K,
        jt: 0,
        jf: 0,
        k: snaplen,
    };
    if share >= 1.0 {
        return Ok(vec![accept]);
    }
    let tail = control.len();
    let mut prog: Vec<Insn> = control
        .iter()
        .enumerate()
        .map(|(i, ins)| {
            if ins.code == BPF_RET | BPF_K && ins.k == 0 {
                Insn {
                    code: BPF_JMP | BPF_JA,
                    jt: 0,
                    jf: 0,
                    k: (tail - i - 1) as u32,
                }
            } else {
                *ins
            }
        })
        .collect();
    let threshold = (share * 4_294_967_296.0) as u32;
    prog.extend([
        Insn {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k: (SKF_AD_OFF + SKF_AD_RANDOM) as u32,
        },
        // rand >= threshold → reject (skip the accept), else accept.
        Insn {
            code: BPF_JMP | BPF_JGE | BPF_K,
            jt: 1,
            jf: 0,
            k: threshold,
        },
        accept,
        Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ]);
    if prog.len() > MAX_INSNS {
        return Err(FilterError::TooLong(prog.len()));
    }
    Ok(prog)
}

/// The instructions libpcap compiled.
pub fn from_pcap(p: &pcap::BpfProgram) -> Vec<Insn> {
    p.get_instructions()
        .iter()
        .map(|i| {
            // BpfInstruction is repr(transparent) over struct bpf_insn
            // {u16 code; u8 jt; u8 jf; u32 k} — the kernel's sock_filter layout.
            let raw: [u8; 8] = unsafe { std::mem::transmute_copy(i) };
            Insn {
                code: u16::from_ne_bytes([raw[0], raw[1]]),
                jt: raw[2],
                jf: raw[3],
                k: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
            }
        })
        .collect()
}

/// Replaces the socket's filter (atomic in the kernel: no packet sees no filter).
pub fn attach(fd: std::os::fd::RawFd, prog: &[Insn], iface: &str) -> Result<(), FilterError> {
    let mut insns: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: fprog points at `insns`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(FilterError::Attach {
            iface: iface.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ret(k: u32) -> Insn {
        Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k,
        }
    }

    #[test]
    fn every_reject_jumps_to_the_sampling_tail() {
        // ldh [12]; jeq #0x806 jt 0 jf 1; ret #128; ret #0
        let ctl = vec![
            Insn {
                code: 0x28,
                jt: 0,
                jf: 0,
                k: 12,
            },
            Insn {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: 0x806,
            },
            ret(128),
            ret(0),
        ];
        let p = with_sampling(&ctl, 0.25, 128).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(&p[..3], &ctl[..3]);
        // ret #0 at 3 → ja to 4 (k = 0), then ld rand, jge, ret snap, ret 0.
        assert_eq!(p[3].code, BPF_JMP | BPF_JA);
        assert_eq!(3 + 1 + p[3].k as usize, 4);
        assert_eq!(p[4].k, 0xffff_f038);
        assert_eq!(p[5].k, 1 << 30);
        assert_eq!(p[6], ret(128));
        assert_eq!(p[7], ret(0));
        assert_eq!(with_sampling(&ctl, 0.0, 128).unwrap(), ctl);
        assert_eq!(with_sampling(&ctl, 1.0, 128).unwrap(), vec![ret(128)]);
    }

    #[test]
    fn the_default_expression_compiles() {
        let cap = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
        let p = cap.compile(&control_plane_expr(), true).unwrap();
        let insns = from_pcap(&p);
        assert!(insns.len() > 20 && insns.len() < 1000, "{}", insns.len());
        assert!(with_sampling(&insns, 0.01, 128).is_ok());
    }
}
