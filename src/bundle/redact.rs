//! Redaction of secrets in libvirt domain XML before it goes into a bundle:
//! VNC/SPICE `passwd`, `<secret>` values, auth keys and passwords in
//! attributes. Bundles leave the node; credentials must not.

use std::sync::OnceLock;

use regex::Regex;

pub const REDACTED: &str = "REDACTED";

pub fn redact_domain_xml(xml: &str) -> String {
    static ATTR: OnceLock<Regex> = OnceLock::new();
    static ELEM: OnceLock<Regex> = OnceLock::new();
    let attr = ATTR.get_or_init(|| {
        Regex::new(
            r#"(?i)\b(passwd|password|secret|key|auth_key|sharedkey|psk)\s*=\s*(['"])[^'"]*(['"])"#,
        )
        .expect("regex")
    });
    let elem = ELEM.get_or_init(|| {
        Regex::new(
            r"(?is)<(secret|password|passwd|key)(\s[^>]*)?>[^<]*</(secret|password|passwd|key)>",
        )
        .expect("regex")
    });
    let x = attr.replace_all(xml, |c: &regex::Captures| {
        format!("{}={}{REDACTED}{}", &c[1], &c[2], &c[3])
    });
    elem.replace_all(&x, |c: &regex::Captures| {
        format!(
            "<{}{}>{REDACTED}</{}>",
            &c[1],
            c.get(2).map_or("", |m| m.as_str()),
            &c[3]
        )
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_password_and_secrets_are_gone() {
        let xml = include_str!("../../tests/fixtures/libvirt/nova-instance.xml");
        assert!(xml.contains("s3cr3t-vnc"));
        let r = redact_domain_xml(xml);
        assert!(!r.contains("s3cr3t-vnc"));
        assert!(r.contains("passwd='REDACTED'"));
        // The rest stays: what an engineer needs.
        assert!(r.contains("tap3f2a1b4c-5d") && r.contains("fa:16:3e:4b:6a:01"));
        let spice = "<graphics type=\"spice\" passwd=\"p@ss\"/><secret ephemeral='no'>QmFzZTY0</secret><auth username='u'><secret type='ceph' usage='x'/></auth>";
        let r = redact_domain_xml(spice);
        assert!(!r.contains("p@ss") && !r.contains("QmFzZTY0"), "{r}");
        assert!(
            r.contains("username='u'") && r.contains("type='ceph'"),
            "{r}"
        );
    }
}
