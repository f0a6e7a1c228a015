//! The /proc side of the `neighbours` section: the table limits
//! (net.ipv{4,6}.neigh.default.gc_thresh1..3) and the per-CPU neighbour
//! cache statistics (/proc/net/stat/{arp,ndisc}_cache: table_fulls,
//! forced_gc_runs, unresolved_discards — catalogue F4). The counts
//! themselves come from a netlink dump (collect/neigh.rs).
//!
//! Both exist only in the root namespace: inside a child namespace every
//! field is None, which is normal, not an error. A file that exists but
//! does not parse is an error naming its path and line.

use std::collections::BTreeMap;

use super::{CollectError, Context};
use crate::kernel;
use crate::sample::Neighbours;
use crate::source::procfs;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NeighLimits {
    pub gc_thresh: Option<[u32; 3]>,
    pub gc_thresh6: Option<[u32; 3]>,
    /// Summed over CPUs; `entries` is the table size (a gauge), not summed.
    pub arp_cache: Option<BTreeMap<String, u64>>,
    pub ndisc_cache: Option<BTreeMap<String, u64>>,
}

impl NeighLimits {
    /// Moves the limits into a neighbours section built from netlink.
    pub fn apply_to(self, n: &mut Neighbours) {
        n.gc_thresh = self.gc_thresh;
        n.gc_thresh6 = self.gc_thresh6;
        n.arp_cache = self.arp_cache;
        n.ndisc_cache = self.ndisc_cache;
    }
}

fn thresh(ctx: &Context, family: &str) -> Result<Option<[u32; 3]>, CollectError> {
    let rel = |i| format!("sys/net/{family}/neigh/default/gc_thresh{i}");
    let (a, b, c) = (rel(1), rel(2), rel(3));
    procfs::read_u32_triple(&ctx.proc_root, [&a, &b, &c])
}

fn cache_stats(ctx: &Context, name: &str) -> Result<Option<BTreeMap<String, u64>>, CollectError> {
    let rel = format!("net/stat/{name}");
    let Some(t) = procfs::read_optional(&ctx.proc_root, &rel)? else {
        return Ok(None);
    };
    kernel::statfile::parse(&t)
        .map(Some)
        .map_err(|e| procfs::parse_err(&ctx.proc_root, &rel, e))
}

pub fn read_neigh_limits(ctx: &Context) -> Result<NeighLimits, CollectError> {
    Ok(NeighLimits {
        gc_thresh: thresh(ctx, "ipv4")?,
        gc_thresh6: thresh(ctx, "ipv6")?,
        arp_cache: cache_stats(ctx, "arp_cache")?,
        ndisc_cache: cache_stats(ctx, "ndisc_cache")?,
    })
}
