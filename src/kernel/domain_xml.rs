//! libvirt domain XML → vNICs and nova metadata (pure; roxmltree), and the
//! names of libvirt's state, reason and lifecycle-event numbers.
//!
//! Only what the sampler needs is read; secrets (graphics passwords) are
//! never copied out of the XML. The XML libvirt hands a read-only
//! connection carries no passwords anyway (that needs VIR_DOMAIN_XML_SECURE,
//! which read-only connections may not ask for); the bundle's copy of the
//! raw XML is redacted separately (bundle/redact.rs).

use thiserror::Error;

use crate::sample::libvirt::{Nova, Vnic};

/// The namespace nova-compute writes its `<nova:instance>` metadata in.
pub const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainXml {
    pub vnics: Vec<Vnic>,
    pub nova: Option<Nova>,
}

#[derive(Debug, Error)]
pub enum DomainXmlError {
    #[error("domain XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("domain XML: root element is <{0}>, not <domain>")]
    NotADomain(String),
}

pub fn parse(xml: &str) -> Result<DomainXml, DomainXmlError> {
    let doc = roxmltree::Document::parse(xml)?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(DomainXmlError::NotADomain(
            root.tag_name().name().to_string(),
        ));
    }
    let vnics = root
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("interface")))
        .map(vnic)
        .collect();
    Ok(DomainXml {
        vnics,
        nova: root.descendants().find(is_nova("instance")).map(nova),
    })
}

fn vnic(iface: roxmltree::Node) -> Vnic {
    let attr = |tag: &str, attr: &str| -> String {
        iface
            .children()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.attribute(attr))
            .unwrap_or_default()
            .to_string()
    };
    Vnic {
        // libvirt writes MACs lowercase, hand-written XML may not; links
        // are compared lowercase.
        mac: attr("mac", "address").to_ascii_lowercase(),
        target_dev: attr("target", "dev"),
        bridge: attr("source", "bridge"),
        network: attr("source", "network"),
        kind: iface.attribute("type").unwrap_or_default().to_string(),
        model: attr("model", "type"),
        link_state: attr("link", "state"),
        mtu: attr("mtu", "size").parse().ok(),
        host_ifindex: None,
        host_ifname: None,
    }
}

fn is_nova(name: &'static str) -> impl Fn(&roxmltree::Node) -> bool {
    move |n: &roxmltree::Node| {
        n.tag_name().namespace() == Some(NOVA_NS) && n.tag_name().name() == name
    }
}

fn nova(inst: roxmltree::Node) -> Nova {
    let node = |name: &'static str| inst.descendants().find(is_nova(name));
    let text = |name| {
        node(name)
            .and_then(|n| n.text())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let attr = |name, a| {
        node(name)
            .and_then(|n| n.attribute(a))
            .unwrap_or_default()
            .to_string()
    };
    Nova {
        instance_name: text("name"),
        project_id: attr("project", "uuid"),
        project_name: text("project"),
        user_name: text("user"),
        flavor: attr("flavor", "name"),
        // <nova:ports><nova:port><nova:ip type="fixed" address=… ipVersion="4"/>
        // (nova ≥ 22): the guest's fixed addresses, which the detector's
        // guest probes may use.
        ips: inst
            .descendants()
            .filter(is_nova("ip"))
            .filter_map(|n| n.attribute("address"))
            .map(str::to_string)
            .collect(),
    }
}

/// libvirt's state names (virDomainState).
pub fn state_name(state: u32) -> &'static str {
    match state {
        1 => "running",
        2 => "blocked",
        3 => "paused",
        4 => "shutdown",
        5 => "shutoff",
        6 => "crashed",
        7 => "pmsuspended",
        _ => "nostate",
    }
}

/// libvirt's reason names per state (virDomain{Running,Paused,…}Reason in
/// libvirt-domain.h, checked against libvirt 9.0's header; api_error is 10.x).
pub fn reason_name(state: u32, reason: i32) -> String {
    let names: &[&str] = match state {
        1 => &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from_snapshot",
            "unpaused",
            "migration_canceled",
            "save_canceled",
            "wakeup",
            "crashed",
            "postcopy",
            "postcopy_failed",
        ],
        3 => &[
            "unknown",
            "user",
            "migration",
            "save",
            "dump",
            "ioerror",
            "watchdog",
            "from_snapshot",
            "shutting_down",
            "snapshot",
            "crashed",
            "starting_up",
            "postcopy",
            "postcopy_failed",
            "api_error",
        ],
        4 => &["unknown", "user"],
        5 => &[
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from_snapshot",
            "daemon",
        ],
        6 => &["unknown", "panicked"],
        _ => &["unknown"],
    };
    usize::try_from(reason)
        .ok()
        .and_then(|i| names.get(i))
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("reason_{reason}"))
}

/// Lifecycle event names (virDomainEventType) and their details
/// (virDomainEvent*DetailType), as libvirt-domain.h names them.
pub fn event_name(event: i32, detail: i32) -> (String, String) {
    let events = [
        "defined",
        "undefined",
        "started",
        "suspended",
        "resumed",
        "stopped",
        "shutdown",
        "pmsuspended",
        "crashed",
    ];
    let details: &[&str] = match event {
        0 => &["added", "updated", "renamed", "from_snapshot"],
        1 => &["removed", "renamed"],
        2 => &["booted", "migrated", "restored", "from_snapshot", "wakeup"],
        3 => &[
            "paused",
            "migrated",
            "ioerror",
            "watchdog",
            "restored",
            "from_snapshot",
            "api_error",
            "postcopy",
            "postcopy_failed",
        ],
        4 => &[
            "unpaused",
            "migrated",
            "from_snapshot",
            "postcopy",
            "postcopy_failed",
        ],
        5 => &[
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from_snapshot",
        ],
        6 => &["finished", "guest", "host"],
        7 => &["memory", "disk"],
        8 => &["panicked", "crashloaded"],
        _ => &[],
    };
    let pick = |names: &[&str], i: i32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| names.get(i))
            .map(|s| s.to_string())
    };
    (
        pick(&events, event).unwrap_or_else(|| format!("event_{event}")),
        pick(details, detail).unwrap_or_else(|| detail.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_domain() {
        // tests/fixtures/libvirt/nova-instance.xml: shaped like a nova-compute
        // generated domain (OpenStack 2023.x), addresses and ids made up.
        let d = parse(include_str!(
            "../../tests/fixtures/libvirt/nova-instance.xml"
        ))
        .unwrap();
        assert_eq!(d.vnics.len(), 2);
        let v = &d.vnics[0];
        assert_eq!(v.mac, "fa:16:3e:4b:6a:01");
        assert_eq!(v.target_dev, "tap3f2a1b4c-5d");
        assert_eq!(v.bridge, "brq8c2f9a1e-12");
        assert_eq!((v.kind.as_str(), v.model.as_str()), ("bridge", "virtio"));
        assert_eq!(v.mtu, Some(1450));
        assert_eq!(v.link_state, "");
        let v = &d.vnics[1];
        assert_eq!(
            (v.kind.as_str(), v.network.as_str()),
            ("network", "default")
        );
        assert_eq!(
            v.bridge, "",
            "inactive XML of a network interface names no bridge"
        );
        let n = d.nova.unwrap();
        assert_eq!(n.instance_name, "tools-webproxy-01");
        assert_eq!(n.project_name, "tools");
        assert_eq!(n.project_id, "6b7e0ad3d4b94a7f9c8d1e2f3a4b5c6d");
        assert_eq!(n.flavor, "m1.medium");
        assert_eq!(n.user_name, "andrew");
    }

    #[test]
    fn xml_as_libvirt_writes_it() {
        // tests/fixtures/libvirt/dumpxml-*.xml: `virsh dumpxml` (libvirt
        // 9.0) of the test-driver node tests/fixtures/libvirt/node.xml.
        let d = parse(include_str!(
            "../../tests/fixtures/libvirt/dumpxml-web-02.xml"
        ))
        .unwrap();
        assert!(d.nova.is_none());
        assert_eq!(d.vnics.len(), 2);
        let v = &d.vnics[0];
        assert_eq!(v.mac, "52:54:00:6c:1a:02", "libvirt lowercases MACs");
        assert_eq!(v.bridge, "br0");
        assert_eq!(v.target_dev, "tap-web02");
        assert_eq!(v.link_state, "down");
        assert_eq!(v.mtu, Some(9000));
        let v = &d.vnics[1];
        assert_eq!(
            (v.kind.as_str(), v.network.as_str()),
            ("network", "default")
        );
        assert_eq!(
            v.target_dev, "testnet0",
            "the test driver names unnamed vNICs"
        );
        assert_eq!(v.model, "e1000");

        let d = parse(include_str!(
            "../../tests/fixtures/libvirt/dumpxml-web-01.xml"
        ))
        .unwrap();
        assert_eq!(d.vnics.len(), 1);
        assert_eq!(d.vnics[0].target_dev, "testnet0", "vnet3 was renamed");
        let n = d.nova.unwrap();
        assert_eq!(
            (
                n.instance_name.as_str(),
                n.project_name.as_str(),
                n.flavor.as_str()
            ),
            ("tools-webproxy-01", "tools", "m1.small")
        );
    }

    #[test]
    fn secrets_never_leave_the_parser() {
        for (xml, secret) in [
            (
                include_str!("../../tests/fixtures/libvirt/nova-instance.xml"),
                "s3cr3t-vnc",
            ),
            (
                include_str!("../../tests/fixtures/libvirt/dumpxml-secure-web-01.xml"),
                "hunter2-vnc",
            ),
        ] {
            assert!(xml.contains(secret), "fixture lost its password");
            let d = parse(xml).unwrap();
            assert!(!format!("{d:?}").contains(secret));
        }
    }

    #[test]
    fn plain_domain_and_garbage() {
        let d = parse("<domain><name>x</name><devices><interface type='bridge'><mac address='52:54:00:AA:00:01'/><source bridge='br0'/></interface></devices></domain>").unwrap();
        assert_eq!(d.vnics[0].mac, "52:54:00:aa:00:01");
        assert_eq!(d.vnics[0].target_dev, "");
        assert_eq!(d.vnics[0].mtu, None);
        assert!(d.nova.is_none());
        assert!(parse("<domain>").is_err());
        let e = parse("<domain>\n<name>x</domain>").unwrap_err().to_string();
        assert!(e.contains("2:"), "error names the line: {e}");
        assert!(matches!(
            parse("<network/>"),
            Err(DomainXmlError::NotADomain(n)) if n == "network"
        ));
        // Interfaces outside <devices> (e.g. in <metadata>) are not vNICs.
        let d = parse("<domain><metadata><interface type='bridge'/></metadata></domain>").unwrap();
        assert!(d.vnics.is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(state_name(1), "running");
        assert_eq!(state_name(99), "nostate");
        assert_eq!(reason_name(5, 3), "crashed");
        assert_eq!(reason_name(1, 2), "migrated");
        assert_eq!(reason_name(5, 99), "reason_99");
        assert_eq!(reason_name(5, -1), "reason_-1");
        assert_eq!(
            event_name(5, 2),
            ("stopped".to_string(), "crashed".to_string())
        );
        assert_eq!(
            event_name(0, 1),
            ("defined".to_string(), "updated".to_string())
        );
        assert_eq!(event_name(42, 0).0, "event_42");
    }
}
