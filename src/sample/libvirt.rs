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

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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

// `clone_from` reuses the target's strings and vectors: the libvirt
// collector copies its cached answer into an earlier sample's domains every
// sample (see `Link`'s). Destructured so that a new field cannot be
// forgotten here.
impl Clone for Domain {
    fn clone(&self) -> Self {
        let mut d = Domain::default();
        d.clone_from(self);
        d
    }

    fn clone_from(&mut self, source: &Self) {
        let Domain {
            name,
            uuid,
            id,
            state,
            reason,
            vnics,
            nova,
            xml_error,
        } = source;
        self.name.clone_from(name);
        self.uuid.clone_from(uuid);
        self.id = *id;
        self.state.clone_from(state);
        self.reason.clone_from(reason);
        self.vnics.clone_from(vnics);
        self.nova.clone_from(nova);
        self.xml_error.clone_from(xml_error);
    }
}

impl Clone for Vnic {
    fn clone(&self) -> Self {
        let mut v = Vnic::default();
        v.clone_from(self);
        v
    }

    fn clone_from(&mut self, source: &Self) {
        let Vnic {
            mac,
            target_dev,
            bridge,
            network,
            kind,
            model,
            link_state,
            mtu,
            host_ifindex,
            host_ifname,
        } = source;
        self.mac.clone_from(mac);
        self.target_dev.clone_from(target_dev);
        self.bridge.clone_from(bridge);
        self.network.clone_from(network);
        self.kind.clone_from(kind);
        self.model.clone_from(model);
        self.link_state.clone_from(link_state);
        self.mtu = *mtu;
        self.host_ifindex = *host_ifindex;
        self.host_ifname.clone_from(host_ifname);
    }
}

impl Clone for Nova {
    fn clone(&self) -> Self {
        let mut n = Nova::default();
        n.clone_from(self);
        n
    }

    fn clone_from(&mut self, source: &Self) {
        let Nova {
            instance_name,
            project_id,
            project_name,
            user_name,
            flavor,
            ips,
        } = source;
        self.instance_name.clone_from(instance_name);
        self.project_id.clone_from(project_id);
        self.project_name.clone_from(project_name);
        self.user_name.clone_from(user_name);
        self.flavor.clone_from(flavor);
        self.ips.clone_from(ips);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_from_into_another_domain_gives_the_source() {
        let vnic = |mac: &str, host: Option<&str>| Vnic {
            mac: mac.into(),
            target_dev: format!("t-{mac}"),
            bridge: "br0".into(),
            kind: "bridge".into(),
            mtu: Some(1500),
            host_ifindex: host.map(|_| 7),
            host_ifname: host.map(String::from),
            ..Default::default()
        };
        let source = Domain {
            name: "instance-1".into(),
            uuid: "u1".into(),
            id: Some(3),
            state: "running".into(),
            reason: "booted".into(),
            vnics: vec![vnic("52:54:00:00:00:01", Some("vnet0"))],
            nova: Some(Nova {
                ips: vec!["10.0.0.5".into()],
                ..Default::default()
            }),
            xml_error: None,
        };
        // A longer, different domain: extra vNICs, an error, no nova.
        let mut target = Domain {
            name: "a much longer name than the source".into(),
            state: "paused".into(),
            vnics: vec![
                vnic("aa", None),
                vnic("bb", Some("vnet9")),
                vnic("cc", None),
            ],
            xml_error: Some("gone".into()),
            ..Default::default()
        };
        target.clone_from(&source);
        assert_eq!(target, source);
        let mut target = vec![Domain::default(); 3];
        target.clone_from(&vec![source.clone()]);
        assert_eq!(target, vec![source]);
    }
}
