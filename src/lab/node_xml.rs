//! The libvirt test-driver node XML describing the lab's guests as running
//! domains with bridge interfaces (and, optionally, nova metadata), so the
//! libvirt collector sees what a real node would describe.

use std::fmt::Write as _;

use super::Lab;

/// `vnics_per_domain` guests (vNICs) in a row make one domain, named after
/// the first of them (1 = one domain per guest).
pub fn render(lab: &Lab, nova: bool, vnics_per_domain: usize) -> String {
    let mut x = String::from("<node>\n");
    for (i, group) in lab.guests.chunks(vnics_per_domain.max(1)).enumerate() {
        let g = &group[0];
        let _ = write!(
            x,
            "  <domain type='test'>\n    <name>{name}</name>\n    <uuid>{uuid}</uuid>\n    <memory>131072</memory>\n    <vcpu>1</vcpu>\n    <os><type>hvm</type></os>\n",
            name = g.name,
            uuid = g.uuid
        );
        if nova {
            let _ = write!(
                x,
                "    <metadata>\n      <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\n        <nova:name>{inst}</nova:name>\n        <nova:flavor name='m1.tiny'/>\n        <nova:owner>\n          <nova:user uuid='00000000-0000-4000-8000-00000000a001'>demo</nova:user>\n          <nova:project uuid='00000000-0000-4000-8000-00000000b00{p}'>{project}</nova:project>\n        </nova:owner>\n        <nova:ports>\n          <nova:port uuid='00000000-0000-4000-8000-{i:012x}'>\n            <nova:ip type='fixed' address='{ip}' ipVersion='4'/>\n          </nova:port>\n        </nova:ports>\n      </nova:instance>\n    </metadata>\n",
                inst = if i == 0 { "tools-webproxy-01".to_string() } else { format!("instance-{i:04}") },
                ip = g.ip,
                p = i % 2,
                project = if i % 2 == 0 { "tools" } else { "deployment-prep" }
            );
        }
        let _ = write!(
            x,
            "    <devices>\n      <graphics type='vnc' port='-1' autoport='yes' passwd='lab-vnc-secret-{i}'/>\n"
        );
        for v in group {
            let _ = write!(
                x,
                "      <interface type='bridge'>\n        <mac address='{mac}'/>\n        <source bridge='{br}'/>\n        <target dev='{dev}'/>\n        <model type='virtio'/>\n      </interface>\n",
                mac = v.mac,
                br = lab.bridge,
                dev = v.host_port
            );
        }
        x.push_str("    </devices>\n  </domain>\n");
    }
    x.push_str("</node>\n");
    x
}
