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
    TapNotDrained { guest: usize },
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
            Fault::UplinkTxFrozen => "F1",
        }
    }
}

const NFT_TABLE: &str = "hvflight_lab";

/// The holder of a tap guest: opens the tap (TUNSETIFF) and reads it until
/// SIGUSR1 (then stops reading: the fault), SIGUSR2 resumes. Python because
/// it is a separate process by nature and Debian ships python3.
const TAP_HOLDER: &str = r#"
import fcntl, os, select, signal, struct, sys, time
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x0002 | 0x1000))
reading = [True]
signal.signal(signal.SIGUSR1, lambda *a: reading.__setitem__(0, False))
signal.signal(signal.SIGUSR2, lambda *a: reading.__setitem__(0, True))
print('ready', flush=True)
while True:
    if not reading[0]:
        time.sleep(0.1)
        continue
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        os.read(fd, 65536)
"#;

pub(crate) fn hold_tap(ns: &str, tap: &str) -> Result<Child, LabError> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", TAP_HOLDER, tap])
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
        Fault::UplinkTxFrozen => {
            run(&["tc", "-n", hv, "qdisc", "del", "dev", &lab.uplink, "root"]).map(|_| ())
        }
    }
}
