//! The `softnet` section: /proc/net/softnet_stat per CPU (backlog drops,
//! time squeezes, backlog length — catalogue F15). The file is global: a
//! child namespace sees the host's rows.

use super::{CollectError, Collector, Context};
use crate::kernel;
use crate::sample::Sample;
use crate::source::procfs;

pub struct SoftnetCollector;

pub const SOFTNET_STAT: &str = "net/softnet_stat";

impl Collector for SoftnetCollector {
    fn name(&self) -> &'static str {
        "softnet"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let text = procfs::read(root, SOFTNET_STAT)?;
        let rows =
            kernel::softnet::parse(&text).map_err(|e| procfs::parse_err(root, SOFTNET_STAT, e))?;
        sample.softnet = Some(rows);
        Ok(())
    }
}
