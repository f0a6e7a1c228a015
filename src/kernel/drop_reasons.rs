//! Pure decoding for the drop-reason program's maps: the map key layout
//! (mirrors `struct drop_key` in src/bpf/drops.bpf.c), per-CPU value sums,
//! and reason names from the kernel's `enum skb_drop_reason` members as BTF
//! lists them. The OS side (loading, reading the maps, opening BTF) is in
//! src/source/bpf.rs.

use std::collections::BTreeMap;

/// Size of `struct drop_key`.
pub const KEY_SIZE: usize = 16;

/// One key of the `drops` map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropKey {
    pub netns: u32,
    pub ifindex: u32,
    pub reason: u32,
    pub protocol: u16,
}

impl DropKey {
    /// Decodes a key as the kernel stores it (host byte order).
    pub fn from_bytes(b: &[u8]) -> Option<DropKey> {
        if b.len() != KEY_SIZE {
            return None;
        }
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(DropKey {
            netns: u32_at(0),
            ifindex: u32_at(4),
            reason: u32_at(8),
            protocol: u16::from_ne_bytes([b[12], b[13]]),
        })
    }

    pub fn to_bytes(self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[0..4].copy_from_slice(&self.netns.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[8..12].copy_from_slice(&self.reason.to_ne_bytes());
        b[12..14].copy_from_slice(&self.protocol.to_ne_bytes());
        b
    }
}

/// Sums a per-CPU u64 value (one 8-byte slot per possible CPU).
pub fn sum_percpu(values: &[u8]) -> u64 {
    values
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks of 8")))
        .fold(0u64, |a, v| a.wrapping_add(v))
}

/// Reason value → name, from the running kernel's enum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReasonNames {
    names: BTreeMap<u32, String>,
}

const PREFIX: &str = "SKB_DROP_REASON_";

impl ReasonNames {
    /// From the enum's (name, value) members. `SKB_DROP_REASON_` is
    /// stripped; markers that are not reasons (`MAX`, the subsystem
    /// mask/shift) are skipped so they can never name a real value.
    pub fn from_members<'a>(members: impl IntoIterator<Item = (&'a str, i64)>) -> ReasonNames {
        let mut names = BTreeMap::new();
        for (name, value) in members {
            let short = name.strip_prefix(PREFIX).unwrap_or(name);
            if matches!(short, "MAX" | "SUBSYS_MASK" | "SUBSYS_SHIFT") {
                continue;
            }
            if let Ok(v) = u32::try_from(value) {
                names.entry(v).or_insert_with(|| short.to_string());
            }
        }
        ReasonNames { names }
    }

    /// The name of `value`; values the enum does not list (a subsystem's
    /// own reasons, a newer kernel) are `UNKNOWN_<n>` — never guessed.
    pub fn name(&self, value: u32) -> String {
        match self.names.get(&value) {
            Some(n) => n.clone(),
            None => format!("UNKNOWN_{value}"),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_in_the_c_layout() {
        let k = DropKey {
            netns: 4026531840,
            ifindex: 7,
            reason: 77,
            protocol: 0x0800,
        };
        let b = k.to_bytes();
        assert_eq!(&b[0..4], &4026531840u32.to_ne_bytes());
        assert_eq!(&b[4..8], &7u32.to_ne_bytes());
        assert_eq!(&b[14..16], &[0, 0], "padding stays zero");
        assert_eq!(DropKey::from_bytes(&b), Some(k));
        assert_eq!(DropKey::from_bytes(&b[..15]), None);
    }

    #[test]
    fn percpu_values_sum() {
        let mut v = Vec::new();
        for x in [3u64, 0, 40] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        assert_eq!(sum_percpu(&v), 43);
        assert_eq!(sum_percpu(&[]), 0);
    }

    #[test]
    fn names_come_from_the_enum_and_unknown_values_say_so() {
        // Values as in two different kernels: the same name moves.
        let a = ReasonNames::from_members([
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 11),
            ("SKB_DROP_REASON_MAX", 120),
            ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff0000),
        ]);
        let b = ReasonNames::from_members([("SKB_DROP_REASON_NETFILTER_DROP", 13)]);
        assert_eq!(a.name(11), "NETFILTER_DROP");
        assert_eq!(b.name(13), "NETFILTER_DROP");
        assert_eq!(a.name(0), "SKB_NOT_DROPPED_YET");
        assert_eq!(a.name(120), "UNKNOWN_120", "MAX is not a reason");
        assert_eq!(a.name(0x10002), "UNKNOWN_65538");
        assert_eq!(a.len(), 4);
    }
}
