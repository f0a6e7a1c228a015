//! Faults of the failure catalogue marked "lab", injected (and reverted)
//! with the commands an operator or a broken host would issue.

use std::process::{Child, Command, Stdio};

use super::{run, run_input, Lab, LabError};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// F2: the switch side of the uplink goes down (carrier loss on the uplink).
    UplinkDown,
    /// F8: a bridge port leaves forwarding. Set to state 0 (disabled): on
    /// this kernel, with STP off, a port set to 4 (blocking) is put back to
    /// forwarding at once by br_port_state_selection(); only "disabled"
    /// sticks (measured on 6.18). With kernel STP on, user changes get EBUSY.
    PortDisabled { port: String },
    /// F8, "long forward delay": a port held in another non-forwarding
    /// state — 1 (listening: drops everything) or 2 (learning: learns
    /// source MACs, forwards nothing) — as a new port sits for
    /// 2×forward_delay under STP. 0 works too; 4 (blocking) is refused: with
    /// STP off the kernel turns it back into forwarding at once, so it would
    /// inject nothing. Revert sets 3 (forwarding).
    PortState { port: String, state: u8 },
    /// F11/F12: a bridge-family nftables chain drops all forwarded frames.
    NftBridgeDrop,
    /// F6: a guest's MAC pinned on the uplink port in the FDB.
    FdbHijack { guest: usize },
    /// F7: learning and unicast flooding off on a port, its learned entries flushed.
    LearningFloodOff { port: String },
    /// F17: the switch side's MTU lowered below the guests'.
    MtuMismatch { mtu: u32 },
    /// F17 on the host: a bridge port's MTU lowered (a port with a smaller
    /// MTU joined); the bridge follows the smallest port. Revert sets 1500.
    PortMtu { port: String, mtu: u32 },
    /// F14: a tap guest's process stops reading its tap while traffic toward
    /// it continues (a 100 pps unicast flood from the switch side, started on
    /// the first inject). Revert resumes reading and leaves the traffic
    /// flowing, so the tap's tx_dropped stops rising while tx_packets rises.
    /// The guest keeps sending meanwhile (vhost stops draining toward the
    /// guest; its own transmit path still works).
    TapNotDrained { guest: usize },
    /// F6, host-wide: every guest's MAC pinned on the uplink (a loop
    /// reflecting the guests' frames back teaches the bridge that).
    FdbHijackAll,
    /// F7, host-wide: learning and unicast flooding off on every guest port
    /// (a configuration push), learned entries flushed.
    LearningFloodOffGuests,
    /// F3: the conntrack table full. Bridged IPv4 is tracked in the
    /// hypervisor namespace (an nft `ct` rule; br_netfilter is on), the
    /// global `nf_conntrack_max` is lowered to `max` (root namespace only:
    /// restored on revert, on drop and by the next lab if this process is
    /// killed), and guest 0 opens new UDP flows until the table is full.
    ConntrackFull { max: u64 },
    /// F9's end state without the carrier loss: the switch port drops
    /// everything from the host (err-disabled by BPDU guard on a switch that
    /// keeps the link up, or an upstream ACL). Carrier and port state stay
    /// fine and frames still leave the uplink: only what comes back tells.
    UpstreamDrop,
    /// F1 (the part a lab can do): the uplink's transmit side freezes, as
    /// behind a hung NIC: an htb root qdisc whose only class sends at
    /// 8 bit/s, over a 10-packet pfifo so the queue overflows within a
    /// second at the lab's ping rates (a 1000-packet default would take
    /// minutes). Revert deletes the root qdisc.
    UplinkTxFrozen,
}

impl Fault {
    /// The failure catalogue row this fault reproduces (shared/failure-catalog.md).
    pub fn catalog_id(&self) -> &'static str {
        match self {
            Fault::UplinkDown => "F2",
            Fault::PortDisabled { .. } | Fault::PortState { .. } => "F8",
            Fault::NftBridgeDrop => "F11",
            Fault::FdbHijack { .. } => "F6",
            Fault::LearningFloodOff { .. } => "F7",
            Fault::MtuMismatch { .. } | Fault::PortMtu { .. } => "F17",
            Fault::TapNotDrained { .. } => "F14",
            Fault::FdbHijackAll => "F6",
            Fault::LearningFloodOffGuests => "F7",
            Fault::ConntrackFull { .. } => "F3",
            Fault::UpstreamDrop => "F9",
            Fault::UplinkTxFrozen => "F1",
        }
    }
}

const NFT_TABLE: &str = "hvflight_lab";
const NFT_CT_TABLE: &str = "hvflight_lab_ct";
const NFT_UP_TABLE: &str = "hvflight_lab_up";

/// The holder of a tap guest, which plays the guest: opens the tap
/// (TUNSETIFF), reads it, answers ARP for its address, and ARPs for its
/// gateway once a second (its own traffic, two-way). SIGUSR1 stops reading
/// (the fault: frames toward the guest pile up and drop) while it keeps
/// sending; SIGUSR2 resumes. Python because it is a separate process by
/// nature and Debian ships python3.
const TAP_HOLDER: &str = r#"
import fcntl, os, select, signal, socket, struct, sys, time
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x0002 | 0x1000))
mac = bytes.fromhex(sys.argv[2].replace(':', ''))
ip = socket.inet_aton(sys.argv[3])
gw = socket.inet_aton(sys.argv[4])
def arp(op, dst, tha, tpa):
    body = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, op, mac, ip, tha, tpa)
    return dst + mac + b'\x08\x06' + body + bytes(18)
def send(frame):
    try:
        os.write(fd, frame)
    except OSError:
        pass
reading = [True]
signal.signal(signal.SIGUSR1, lambda *a: reading.__setitem__(0, False))
signal.signal(signal.SIGUSR2, lambda *a: reading.__setitem__(0, True))
print('ready', flush=True)
next_arp = time.time() + 0.5
while True:
    if time.time() >= next_arp:
        send(arp(1, b'\xff' * 6, bytes(6), gw))
        next_arp = time.time() + 1.0
    if not reading[0]:
        time.sleep(0.05)
        continue
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        f = os.read(fd, 65536)
        if len(f) >= 42 and f[12:14] == b'\x08\x06' and f[20:22] == b'\x00\x01' and f[38:42] == ip:
            send(arp(2, f[6:12], f[22:28], f[28:32]))
"#;

pub(crate) fn hold_tap(lab: &Lab, g: &super::Guest) -> Result<Child, LabError> {
    let tap = g.host_port.as_str();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv_ns,
            "python3",
            "-c",
            TAP_HOLDER,
            tap,
            &g.mac,
            &g.ip.to_string(),
            &lab.gateway_ip.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: "python3 tap holder".into(),
            source,
        })?;
    // Wait for "ready" so the tap has carrier before the lab is handed out.
    use std::io::BufRead;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        return Err(LabError::Command {
            cmd: format!("tap holder for {tap}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(child)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<(), LabError> {
    // The holder runs under `ip netns exec`, which execs python3: same pid.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .map_err(|e| LabError::Invalid(format!("signal {sig} to tap holder {pid}: {e}")))
}

fn guest(lab: &Lab, i: usize) -> Result<&super::Guest, LabError> {
    lab.guests
        .get(i)
        .ok_or_else(|| LabError::Invalid(format!("no guest {i}")))
}

pub fn inject(lab: &Lab, f: &Fault) -> Result<(), LabError> {
    let hv = lab.hv_ns.as_str();
    match f {
        Fault::UplinkDown => lab.set_link(&lab.switch_ns, &lab.switch_port, false),
        Fault::PortDisabled { port } => {
            run(&["bridge", "-n", hv, "link", "set", "dev", port, "state", "0"]).map(|_| ())
        }
        Fault::PortState { port, state } => {
            if !matches!(state, 0..=2) {
                return Err(LabError::Invalid(format!(
                    "port state {state}: only 0, 1 or 2 stay put with STP off (4 reverts to forwarding at once)"
                )));
            }
            run(&[
                "bridge",
                "-n",
                hv,
                "link",
                "set",
                "dev",
                port,
                "state",
                &state.to_string(),
            ])
            .map(|_| ())
        }
        Fault::NftBridgeDrop => {
            let rules = format!(
                "table bridge {NFT_TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy drop;\n }}\n}}\n"
            );
            run_input(&["ip", "netns", "exec", hv, "nft", "-f", "-"], Some(&rules)).map(|_| ())
        }
        Fault::FdbHijack { guest: i } => {
            let g = guest(lab, *i)?;
            // `sticky`: since Linux 4.x learning moves even static entries when the
            // guest sends again; a real loop keeps re-teaching the uplink, sticky
            // stands in for that.
            run(&[
                "bridge",
                "-n",
                hv,
                "fdb",
                "replace",
                &g.mac,
                "dev",
                &lab.uplink,
                "master",
                "static",
                "sticky",
            ])
            .map(|_| ())
        }
        Fault::LearningFloodOff { port } => {
            run(&[
                "bridge", "-n", hv, "link", "set", "dev", port, "learning", "off", "flood", "off",
            ])?;
            // Already learned entries keep working until they age out: flush them.
            for g in lab.guests.iter().filter(|g| &g.host_port == port) {
                let _ = run(&[
                    "bridge", "-n", hv, "fdb", "del", &g.mac, "dev", port, "master",
                ]);
            }
            Ok(())
        }
        Fault::MtuMismatch { mtu } => run(&[
            "ip",
            "-n",
            &lab.switch_ns,
            "link",
            "set",
            &lab.switch_port,
            "mtu",
            &mtu.to_string(),
        ])
        .map(|_| ()),
        Fault::PortMtu { port, mtu } => {
            run(&["ip", "-n", hv, "link", "set", port, "mtu", &mtu.to_string()]).map(|_| ())
        }
        Fault::TapNotDrained { guest: i } => {
            let g = guest(lab, *i)?;
            let pid = lab
                .tap_holder(&g.host_port)
                .ok_or_else(|| LabError::Invalid(format!("guest {i} is not a tap guest")))?;
            signal(pid, nix::sys::signal::Signal::SIGUSR1)?;
            if !lab.start_tap_flood(&g.host_port) {
                return Ok(());
            }
            // Unicast toward the guest from the switch side: its MAC is never
            // learned (the guest sends nothing), so the bridge floods it to
            // the tap, whose queue fills.
            let ip = g.ip.to_string();
            run(&[
                "ip",
                "-n",
                &lab.switch_ns,
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &g.mac,
                "dev",
                &lab.switch_port,
            ])?;
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.switch_ns,
                    "ping",
                    "-q",
                    "-i",
                    "0.01",
                    "-s",
                    "1000",
                    &ip,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| LabError::Spawn {
                    cmd: "ping".into(),
                    source,
                })?;
            lab.spawned(child);
            Ok(())
        }
        Fault::FdbHijackAll => {
            for i in 0..lab.guests.len() {
                if lab.guests[i].present {
                    inject(lab, &Fault::FdbHijack { guest: i })?;
                }
            }
            Ok(())
        }
        Fault::LearningFloodOffGuests => {
            for g in lab.guests.iter().filter(|g| g.present) {
                inject(
                    lab,
                    &Fault::LearningFloodOff {
                        port: g.host_port.clone(),
                    },
                )?;
            }
            Ok(())
        }
        Fault::ConntrackFull { max } => {
            let rules = format!(
                "table ip {NFT_CT_TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ct state new counter\n }}\n}}\n"
            );
            run_input(&["ip", "netns", "exec", hv, "nft", "-f", "-"], Some(&rules))?;
            let guard = super::sysctl::GlobalSysctl::set(
                "/proc/sys/net/netfilter/nf_conntrack_max",
                &max.to_string(),
            )?;
            lab.sysctls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(guard);
            let g = lab
                .guests
                .iter()
                .find(|g| g.present && g.ns.is_some())
                .ok_or_else(|| LabError::Invalid("no veth guest to open flows from".into()))?;
            let flows = format!(
                "import socket, time\nwhile True:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.sendto(b'x', ('{}', 9))\n    s.close()\n    time.sleep(0.002)\n",
                lab.gateway_ip
            );
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    g.ns.as_deref().unwrap_or_default(),
                    "python3",
                    "-c",
                    &flows,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| LabError::Spawn {
                    cmd: "python3 flows".into(),
                    source,
                })?;
            lab.fault_child("conntrack", child);
            Ok(())
        }
        Fault::UpstreamDrop => {
            let rules = format!(
                "table netdev {NFT_UP_TABLE} {{\n chain ingress {{\n  type filter hook ingress device {} priority 0; policy drop;\n }}\n}}\n",
                lab.switch_port
            );
            run_input(
                &["ip", "netns", "exec", &lab.switch_ns, "nft", "-f", "-"],
                Some(&rules),
            )
            .map(|_| ())
        }
        Fault::UplinkTxFrozen => freeze_uplink_tx(lab),
    }
}

fn freeze_uplink_tx(lab: &Lab) -> Result<(), LabError> {
    let (hv, up) = (lab.hv_ns.as_str(), lab.uplink.as_str());
    run(&[
        "tc", "-n", hv, "qdisc", "add", "dev", up, "root", "handle", "1:", "htb", "default", "10",
    ])?;
    run(&[
        "tc", "-n", hv, "class", "add", "dev", up, "parent", "1:", "classid", "1:10", "htb",
        "rate", "8bit", "ceil", "8bit",
    ])?;
    run(&[
        "tc", "-n", hv, "qdisc", "add", "dev", up, "parent", "1:10", "handle", "10:", "pfifo",
        "limit", "10",
    ])
    .map(|_| ())
}

pub fn revert(lab: &Lab, f: &Fault) -> Result<(), LabError> {
    let hv = lab.hv_ns.as_str();
    match f {
        Fault::UplinkDown => lab.set_link(&lab.switch_ns, &lab.switch_port, true),
        Fault::PortDisabled { port } | Fault::PortState { port, .. } => {
            run(&["bridge", "-n", hv, "link", "set", "dev", port, "state", "3"]).map(|_| ())
        }
        Fault::NftBridgeDrop => run(&[
            "ip", "netns", "exec", hv, "nft", "delete", "table", "bridge", NFT_TABLE,
        ])
        .map(|_| ()),
        Fault::FdbHijack { guest: i } => {
            let g = guest(lab, *i)?;
            run(&[
                "bridge",
                "-n",
                hv,
                "fdb",
                "del",
                &g.mac,
                "dev",
                &lab.uplink,
                "master",
            ])
            .map(|_| ())
        }
        Fault::LearningFloodOff { port } => run(&[
            "bridge", "-n", hv, "link", "set", "dev", port, "learning", "on", "flood", "on",
        ])
        .map(|_| ()),
        Fault::MtuMismatch { .. } => run(&[
            "ip",
            "-n",
            &lab.switch_ns,
            "link",
            "set",
            &lab.switch_port,
            "mtu",
            "1500",
        ])
        .map(|_| ()),
        Fault::PortMtu { port, .. } => {
            run(&["ip", "-n", hv, "link", "set", port, "mtu", "1500"]).map(|_| ())
        }
        Fault::TapNotDrained { guest: i } => {
            let g = guest(lab, *i)?;
            if let Some(pid) = lab.tap_holder(&g.host_port) {
                signal(pid, nix::sys::signal::Signal::SIGUSR2)?;
            }
            Ok(())
        }
        Fault::FdbHijackAll => {
            for i in 0..lab.guests.len() {
                if lab.guests[i].present {
                    revert(lab, &Fault::FdbHijack { guest: i })?;
                }
            }
            Ok(())
        }
        Fault::LearningFloodOffGuests => {
            for g in lab.guests.iter().filter(|g| g.present) {
                revert(
                    lab,
                    &Fault::LearningFloodOff {
                        port: g.host_port.clone(),
                    },
                )?;
            }
            Ok(())
        }
        Fault::ConntrackFull { .. } => {
            lab.stop_fault_child("conntrack");
            lab.sysctls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            run(&[
                "ip",
                "netns",
                "exec",
                hv,
                "nft",
                "delete",
                "table",
                "ip",
                NFT_CT_TABLE,
            ])
            .map(|_| ())
        }
        Fault::UpstreamDrop => run(&[
            "ip",
            "netns",
            "exec",
            &lab.switch_ns,
            "nft",
            "delete",
            "table",
            "netdev",
            NFT_UP_TABLE,
        ])
        .map(|_| ()),
        Fault::UplinkTxFrozen => {
            run(&["tc", "-n", hv, "qdisc", "del", "dev", &lab.uplink, "root"]).map(|_| ())
        }
    }
}
