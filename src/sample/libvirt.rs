//! Sample section type for libvirt's view of the node: domains, their state
//! and reason, their vNICs (from the domain XML) and nova metadata.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Libvirt {
    pub uri: String,
    #[serde(default)]
    pub domains: Vec<Domain>,
    /// Domain XMLs fetched from libvirt for this sample (the rest came from
    /// the collector's cache): shows what libvirt costs per round.
    #[serde(default)]
    pub xml_fetches: u32,
    /// How old this answer is, ms: libvirt is asked every
    /// `collect.libvirt_interval_ms` and samples in between repeat the last
    /// answer (0 = asked for this sample).
    #[serde(default)]
    pub age_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    /// libvirt domain id (-1 / None when not running).
    #[serde(default)]
    pub id: Option<u32>,
    /// "running", "paused", "shutoff", "crashed", "pmsuspended", "shutdown", "blocked", "nostate".
    pub state: String,
    /// The state's reason as libvirt names it ("booted", "migrated", "crashed", "destroyed", …).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub vnics: Vec<Vnic>,
    #[serde(default)]
    pub nova: Option<Nova>,
    /// Why the domain XML could not be fetched or parsed this round (the
    /// domain is still listed, without vNICs); None when it was fine.
    #[serde(default)]
    pub xml_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Vnic {
    pub mac: String,
    /// <target dev=…> as libvirt reports it (the test driver renames these to testnetN).
    #[serde(default)]
    pub target_dev: String,
    /// <source bridge=…>: the host bridge. For type='network' interfaces the
    /// live XML of a running domain carries it too; the inactive XML does
    /// not, and then this is empty and `network` names the libvirt network.
    #[serde(default)]
    pub bridge: String,
    /// <source network=…> for type='network' interfaces.
    #[serde(default)]
    pub network: String,
    /// <interface type=…>: "bridge", "network", "direct", "ethernet", "vhostuser", …
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub model: String,
    /// <link state=…>: "down" when someone ran `domif-setlink … down`
    /// (libvirt sends no event for it); empty = up (libvirt's default).
    #[serde(default)]
    pub link_state: String,
    /// <mtu size=…> when the XML sets one.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The host interface this vNIC is, resolved by name when target_dev
    /// names a real interface, else by MAC (host MAC = guest MAC with first octet fe).
    #[serde(default)]
    pub host_ifindex: Option<u32>,
    #[serde(default)]
    pub host_ifname: Option<String>,
}

/// OpenStack nova's `<nova:instance>` metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Nova {
    #[serde(default)]
    pub instance_name: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub project_name: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub flavor: String,
    /// Fixed IPs of the instance's ports (`<nova:ports>`, nova ≥ 22).
    #[serde(default)]
    pub ips: Vec<String>,
}
