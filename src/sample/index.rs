//! Per-sample lookup tables (link by name, vNICs libvirt maps), built on
//! first use. Callers look up every bridge port each sample; a linear scan
//! per port made that quadratic in interfaces (500 vNICs: 250k compares).
//!
//! The tables are built from the sample the first time a lookup runs, so a
//! sample must be complete before anyone looks things up in it (collectors
//! do not; the detector, printers, metrics and analyzer run afterwards).

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::OnceLock;

use super::Sample;

#[derive(Default, Debug)]
pub struct Tables {
    /// Link name → position in `Sample::links`.
    pub links: FxHashMap<String, usize>,
    /// Host interfaces libvirt maps a domain's vNIC to.
    pub mapped_vnics: FxHashSet<String>,
}

#[derive(Default, Debug)]
pub struct Index(OnceLock<Tables>);

impl Index {
    pub fn get(&self, s: &Sample) -> &Tables {
        self.0.get_or_init(|| Tables {
            links: s
                .links
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, l)| (l.name.clone(), i))
                .collect(),
            mapped_vnics: s
                .libvirt
                .iter()
                .flat_map(|l| &l.domains)
                .flat_map(|d| &d.vnics)
                .filter_map(|v| v.host_ifname.clone())
                .collect(),
        })
    }
}

/// A clone may be changed afterwards: it builds its own tables.
impl Clone for Index {
    fn clone(&self) -> Self {
        Index::default()
    }
}

/// Not part of a sample's value.
impl PartialEq for Index {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
