//! The `netfilter` section: a cheap ruleset fingerprint (the nf_tables
//! generation id, one netlink round trip), whether bridged traffic is sent
//! through iptables (bridge-nf-call-*, catalogue F11), and which legacy
//! xtables tables exist. br_netfilter, ip_tables and nf_tables may all be
//! absent; each absence leaves its field empty and is not a failure.

use std::time::Duration;

use super::{CollectError, Collector, Context};
use crate::sample::{Netfilter, Sample};
use crate::source::nfgen::{self, NfGen};
use crate::source::procfs;

/// The kernel answers GETGEN from memory; waiting longer means it is wedged.
pub const NFGEN_TIMEOUT: Duration = Duration::from_millis(500);

pub struct NetfilterCollector {
    nfgen: Option<NfGen>,
    timeout: Duration,
}

impl NetfilterCollector {
    pub fn new() -> Self {
        Self::with_timeout(NFGEN_TIMEOUT)
    }

    pub fn with_timeout(timeout: Duration) -> Self {
        NetfilterCollector {
            nfgen: None,
            timeout,
        }
    }

    fn genid(&mut self) -> Result<Option<u32>, CollectError> {
        let err = |what: &str, e: std::io::Error| CollectError::Netlink {
            what: what.into(),
            msg: e.to_string(),
        };
        let g = match &mut self.nfgen {
            Some(g) => g,
            None => match NfGen::new(self.timeout) {
                Ok(g) => self.nfgen.insert(g),
                Err(e) if nfgen::is_unavailable(&e) => return Ok(None),
                Err(e) => return Err(err("NETLINK_NETFILTER socket", e)),
            },
        };
        g.genid().map_err(|e| {
            // Reopen next time: the socket may hold a late reply.
            self.nfgen = None;
            if e.kind() == std::io::ErrorKind::WouldBlock {
                CollectError::Timeout {
                    what: "NFT_MSG_GETGEN".into(),
                    ms: self.timeout.as_millis() as u64,
                }
            } else {
                err("NFT_MSG_GETGEN", e)
            }
        })
    }
}

impl Default for NetfilterCollector {
    fn default() -> Self {
        Self::new()
    }
}

fn flag(ctx: &Context, name: &str) -> Result<Option<bool>, CollectError> {
    let rel = format!("sys/net/bridge/{name}");
    Ok(procfs::read_u64(&ctx.proc_root, &rel)?.map(|v| v != 0))
}

/// /proc/net/ip{,6}_tables_names: one table name per line, empty when the
/// module is loaded but no table is in use.
fn table_names(ctx: &Context, rel: &str) -> Result<Vec<String>, CollectError> {
    Ok(procfs::read_optional(&ctx.proc_root, rel)?
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default())
}

impl Collector for NetfilterCollector {
    fn name(&self) -> &'static str {
        "netfilter"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let n = Netfilter {
            bridge_nf_call_iptables: flag(ctx, "bridge-nf-call-iptables")?,
            bridge_nf_call_ip6tables: flag(ctx, "bridge-nf-call-ip6tables")?,
            bridge_nf_call_arptables: flag(ctx, "bridge-nf-call-arptables")?,
            legacy_tables: table_names(ctx, "net/ip_tables_names")?,
            legacy_tables6: table_names(ctx, "net/ip6_tables_names")?,
            nft_genid: self.genid()?,
        };
        sample.netfilter = Some(n);
        Ok(())
    }
}
