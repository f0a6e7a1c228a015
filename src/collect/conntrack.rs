//! The `conntrack` section: table size against its limit and the per-CPU
//! event counters (catalogue F3: count pinned at max, drop/early_drop/
//! insert_failed rising). Without nf_conntrack loaded every field is empty
//! — normal on a host that tracks nothing, not a failure.
//!
//! In a child namespace count and stats are the namespace's own; max and
//! buckets show the global values (read-only there on 6.x).

use super::{CollectError, Collector, Context};
use crate::kernel;
use crate::sample::{Conntrack, Sample};
use crate::source::procfs;

pub struct ConntrackCollector;

pub const NF_CONNTRACK_STAT: &str = "net/stat/nf_conntrack";

impl Collector for ConntrackCollector {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let mut c = Conntrack {
            count: procfs::read_u64(root, "sys/net/netfilter/nf_conntrack_count")?,
            max: procfs::read_u64(root, "sys/net/netfilter/nf_conntrack_max")?,
            buckets: procfs::read_u64(root, "sys/net/netfilter/nf_conntrack_buckets")?,
            ..Default::default()
        };
        if let Some(t) = procfs::read_optional(root, NF_CONNTRACK_STAT)? {
            c.stats = kernel::statfile::parse(&t)
                .map_err(|e| procfs::parse_err(root, NF_CONNTRACK_STAT, e))?;
        }
        sample.conntrack = Some(c);
        Ok(())
    }
}
