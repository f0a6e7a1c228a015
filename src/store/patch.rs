//! The reader's fast path for format-2 samples (issue #2): between
//! keyframes a host's rows keep their shapes and only their numbers move,
//! so a record whose rows have exactly the shapes of an earlier record is
//! read by writing its numbers into that record's `Sample` in place — no
//! allocation, no serde walk over the ~4 400 strings a 500-vNIC sample
//! holds. Everything else (the first record of a run of shapes, a shape
//! change, a projection, a value a patch cannot take) goes through the
//! generic path (`rows::decode_value`), and a test compares both on every
//! record of stores with churn, unknown sections and both fixtures.
//!
//! How a row is patched: once per row (per run of identical row lists) its
//! shape is walked into a *plan* — for each of its numbers, the setter of
//! the typed field it goes to, and for each group of child rows, how to
//! patch them. Fields are matched by name against a table per type below;
//! the table is checked against the fields serde knows for the type (a
//! test fails when a field is added to a `Sample` type and not here, and at
//! run time such a field only costs the fast path, never a wrong value).
//! A field the shape has and the type does not (a newer writer's) is
//! skipped, as serde skips it. Sections without a table (neighbours,
//! conntrack, system, netfilter, capture, failures: one row each, or few)
//! are re-read generically from their own rows, alone.
//!
//! Why not serde's `deserialize_in_place`: `Option` (every section) has no
//! in-place form, and it still visits every string and field name, which is
//! most of the generic path's cost.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::{self, DeserializeOwned, Visitor};

use super::rows::{
    decode_row, get_varint, read_str, value_info, Projection, RowsView, OP_F32, OP_F64, OP_MAP,
    OP_ROW, OP_ROWS, OP_SINT, OP_SOME, OP_UINT,
};
use super::table::Decoded;
use crate::sample::bridge::PortVlan;
use crate::sample::{
    Bridge, BridgePort, Domain, DropCount, Drops, FdbEntry, GatewayProbe, GuestProbe, Libvirt,
    Link, Probes, Qdisc, Sample, Snmp, SoftnetCpu, Vnic,
};

/// A number of the row into a typed field; None when it does not fit (the
/// generic path then decides, and reports).
type Set<T> = fn(&mut T, u64) -> Option<()>;
/// Several numbers at once (a map's values).
type SetMany<T> = fn(&mut T, &[u64]) -> Option<()>;
/// Child rows of one field, from row `c`, `n` of them; gives the row after.
type Children<T> = fn(&mut T, &mut Cx, usize, u64) -> Option<usize>;

/// A number type of the row format, converted exactly as serde's primitive
/// visitors convert what the generic path hands them.
trait Num: Sized {
    const OP: u8;
    fn from_num(v: u64) -> Option<Self>;
}
macro_rules! num_impl {
    ($($t:ty: $op:ident, |$v:ident| $e:expr;)*) => {$(
        impl Num for $t {
            const OP: u8 = $op;
            #[inline]
            fn from_num($v: u64) -> Option<Self> {
                $e
            }
        }
    )*};
}
num_impl! {
    u64: OP_UINT, |v| Some(v);
    u32: OP_UINT, |v| u32::try_from(v).ok();
    u16: OP_UINT, |v| u16::try_from(v).ok();
    u8: OP_UINT, |v| u8::try_from(v).ok();
    i64: OP_SINT, |v| Some(v as i64);
    i32: OP_SINT, |v| i32::try_from(v as i64).ok();
    f64: OP_F64, |v| Some(f64::from_bits(v));
    f32: OP_F32, |v| Some(f32::from_bits(v as u32));
}

fn op_of<N: Num>(_: &N) -> u8 {
    N::OP
}
fn op_of_opt<N: Num>(_: &Option<N>) -> u8 {
    N::OP
}

enum Kind<T: 'static> {
    /// A value without numbers or rows (string, bool, …): the same shape is
    /// the same value, nothing to write.
    Fixed,
    /// A number (`opt`: inside an `Option`, SOME then the number).
    Num { op: u8, opt: bool, set: Set<T> },
    /// A struct written inline in the row.
    Inline { fields: fn() -> &'static Table<T> },
    /// A `BTreeMap<String, i64>` inline: its values in key order.
    SintMap { set: SetMany<T> },
    /// A sequence of child rows (`count` checks the length).
    Rows {
        count: Set<T>,
        children: Children<T>,
    },
    /// One child row.
    Row { children: Children<T> },
}

struct Field<T: 'static> {
    name: &'static str,
    kind: Kind<T>,
}

/// The fields of one type as its rows name them, and serde's list of them.
pub(crate) struct Table<T: 'static> {
    fields: Vec<Field<T>>,
    serde: &'static [&'static str],
}

/// A type whose rows can be patched in place.
trait Patch: Sized + 'static {
    fn table() -> &'static Table<Self>;
}

macro_rules! field {
    ($t:ty, $name:literal, fixed) => {
        Field::<$t> { name: $name, kind: Kind::Fixed }
    };
    ($t:ty, $name:literal, num $($p:ident).+) => {
        Field::<$t> {
            name: $name,
            kind: Kind::Num {
                op: op_of(&<$t>::default().$($p).+),
                opt: false,
                set: |t: &mut $t, v| {
                    t.$($p).+ = Num::from_num(v)?;
                    Some(())
                },
            },
        }
    };
    ($t:ty, $name:literal, opt $($p:ident).+) => {
        Field::<$t> {
            name: $name,
            kind: Kind::Num {
                op: op_of_opt(&<$t>::default().$($p).+),
                opt: true,
                set: |t: &mut $t, v| {
                    *t.$($p).+.as_mut()? = Num::from_num(v)?;
                    Some(())
                },
            },
        }
    };
    // Vec<U> / Option<Vec<U>> of rows; `patch` when U has a table, `generic` when not.
    ($t:ty, $name:literal, rows $how:ident $($get:tt)+) => {
        Field::<$t> {
            name: $name,
            kind: Kind::Rows {
                count: |t: &mut $t, n| (vec_of(&mut t.$($get)+)?.len() as u64 == n).then_some(()),
                children: |t: &mut $t, cx, c, n| $how(vec_of(&mut t.$($get)+)?, cx, c, n),
            },
        }
    };
    ($t:ty, $name:literal, inline $f:path) => {
        Field::<$t> { name: $name, kind: Kind::Inline { fields: $f } }
    };
    ($t:ty, $name:literal, sintmap $f:ident) => {
        Field::<$t> {
            name: $name,
            kind: Kind::SintMap { set: |t: &mut $t, vals| set_sint_map(&mut t.$f, vals) },
        }
    };
    ($t:ty, $name:literal, row patch $f:ident) => {
        Field::<$t> {
            name: $name,
            kind: Kind::Row { children: |t: &mut $t, cx, c, _| patch_row(t.$f.as_mut()?, cx, c) },
        }
    };
    ($t:ty, $name:literal, row generic $f:ident) => {
        Field::<$t> {
            name: $name,
            kind: Kind::Row { children: |t: &mut $t, cx, c, _| generic_row(t.$f.as_mut()?, cx, c) },
        }
    };
}

macro_rules! table {
    ($t:ty { $($name:literal => ($($how:tt)+)),* $(,)? }) => {
        impl Patch for $t {
            fn table() -> &'static Table<$t> {
                static T: LazyLock<Table<$t>> = LazyLock::new(|| Table {
                    fields: vec![$(field!($t, $name, $($how)+)),*],
                    serde: serde_fields::<$t>(),
                });
                &T
            }
        }
    };
}

/// `Vec<U>` and `Option<Vec<U>>` fields alike.
trait VecOf<U> {
    fn get(&mut self) -> Option<&mut Vec<U>>;
}
impl<U> VecOf<U> for Vec<U> {
    fn get(&mut self) -> Option<&mut Vec<U>> {
        Some(self)
    }
}
impl<U> VecOf<U> for Option<Vec<U>> {
    fn get(&mut self) -> Option<&mut Vec<U>> {
        self.as_mut()
    }
}
fn vec_of<U, V: VecOf<U>>(v: &mut V) -> Option<&mut Vec<U>> {
    v.get()
}

table!(Sample {
    "version" => (num version),
    "seq" => (num seq),
    "ts_unix_ns" => (num ts_unix_ns),
    "mono_ns" => (num mono_ns),
    "boot_ns" => (num boot_ns),
    "host" => (fixed),
    "duration_us" => (num duration_us),
    "lag_us" => (num lag_us),
    "links" => (rows patch_vec links),
    "bridges" => (rows patch_vec bridges),
    "fdb" => (rows patch_vec fdb),
    "neighbours" => (row generic neighbours),
    "qdiscs" => (rows patch_vec qdiscs),
    "conntrack" => (row generic conntrack),
    "softnet" => (rows patch_vec softnet),
    "snmp" => (row patch snmp),
    "system" => (row generic system),
    "netfilter" => (row generic netfilter),
    "libvirt" => (row patch libvirt),
    "capture" => (row generic capture),
    "probes" => (row patch probes),
    "drops" => (row patch drops),
    "failures" => (rows generic_vec failures),
});

table!(Link {
    "ifindex" => (num ifindex),
    "name" => (fixed),
    "kind" => (fixed),
    "master" => (opt master),
    "link" => (opt link),
    "mac" => (fixed),
    "mtu" => (num mtu),
    "operstate" => (fixed),
    "admin_up" => (fixed),
    "carrier" => (fixed),
    "carrier_changes" => (opt carrier_changes),
    "txqlen" => (opt txqlen),
    "stats" => (inline Link::stats_table),
});

impl Link {
    fn stats_table() -> &'static Table<Link> {
        static T: LazyLock<Table<Link>> = LazyLock::new(|| Table {
            fields: vec![
                field!(Link, "rx_packets", num stats.rx_packets),
                field!(Link, "tx_packets", num stats.tx_packets),
                field!(Link, "rx_bytes", num stats.rx_bytes),
                field!(Link, "tx_bytes", num stats.tx_bytes),
                field!(Link, "rx_errors", num stats.rx_errors),
                field!(Link, "tx_errors", num stats.tx_errors),
                field!(Link, "rx_dropped", num stats.rx_dropped),
                field!(Link, "tx_dropped", num stats.tx_dropped),
                field!(Link, "multicast", num stats.multicast),
                field!(Link, "collisions", num stats.collisions),
                field!(Link, "rx_length_errors", num stats.rx_length_errors),
                field!(Link, "rx_over_errors", num stats.rx_over_errors),
                field!(Link, "rx_crc_errors", num stats.rx_crc_errors),
                field!(Link, "rx_frame_errors", num stats.rx_frame_errors),
                field!(Link, "rx_fifo_errors", num stats.rx_fifo_errors),
                field!(Link, "rx_missed_errors", num stats.rx_missed_errors),
                field!(Link, "tx_aborted_errors", num stats.tx_aborted_errors),
                field!(Link, "tx_carrier_errors", num stats.tx_carrier_errors),
                field!(Link, "tx_fifo_errors", num stats.tx_fifo_errors),
                field!(Link, "tx_heartbeat_errors", num stats.tx_heartbeat_errors),
                field!(Link, "tx_window_errors", num stats.tx_window_errors),
                field!(Link, "rx_compressed", num stats.rx_compressed),
                field!(Link, "tx_compressed", num stats.tx_compressed),
                field!(Link, "rx_nohandler", num stats.rx_nohandler),
            ],
            serde: serde_fields::<crate::sample::LinkStats>(),
        });
        &T
    }
}

table!(Bridge {
    "ifindex" => (num ifindex),
    "name" => (fixed),
    "mac" => (fixed),
    "stp_state" => (opt stp_state),
    "forward_delay_cs" => (opt forward_delay_cs),
    "hello_time_cs" => (opt hello_time_cs),
    "max_age_cs" => (opt max_age_cs),
    "ageing_time_cs" => (opt ageing_time_cs),
    "priority" => (opt priority),
    "vlan_filtering" => (fixed),
    "default_pvid" => (opt default_pvid),
    "multicast_snooping" => (fixed),
    "multicast_querier" => (fixed),
    "topology_change" => (fixed),
    "topology_change_detected" => (fixed),
    "root_id" => (fixed),
    "bridge_id" => (fixed),
    "ports" => (rows patch_vec ports),
});

table!(BridgePort {
    "ifindex" => (num ifindex),
    "name" => (fixed),
    "state" => (num state),
    "learning" => (fixed),
    "unicast_flood" => (fixed),
    "multicast_flood" => (fixed),
    "broadcast_flood" => (fixed),
    "bpdu_guard" => (fixed),
    "root_block" => (fixed),
    "hairpin" => (fixed),
    "isolated" => (fixed),
    "neigh_suppress" => (fixed),
    "cost" => (opt cost),
    "priority" => (opt priority),
    "vlans" => (rows patch_vec vlans),
});

table!(PortVlan {
    "vid" => (num vid),
    "pvid" => (fixed),
    "untagged" => (fixed),
});

table!(FdbEntry {
    "mac" => (fixed),
    "ifindex" => (num ifindex),
    "port" => (fixed),
    "master" => (opt master),
    "vlan" => (opt vlan),
    "state" => (fixed),
    "is_self" => (fixed),
    "extern_learn" => (fixed),
    "updated_s" => (opt updated_s),
});

table!(Qdisc {
    "ifindex" => (num ifindex),
    "dev" => (fixed),
    "kind" => (fixed),
    "handle" => (fixed),
    "parent" => (fixed),
    "bytes" => (num bytes),
    "packets" => (num packets),
    "drops" => (num drops),
    "overlimits" => (num overlimits),
    "requeues" => (num requeues),
    "backlog_bytes" => (num backlog_bytes),
    "qlen" => (num qlen),
});

table!(SoftnetCpu {
    "cpu" => (num cpu),
    "processed" => (num processed),
    "dropped" => (num dropped),
    "time_squeeze" => (num time_squeeze),
    "received_rps" => (num received_rps),
    "flow_limit_count" => (num flow_limit_count),
    "backlog_len" => (opt backlog_len),
});

table!(Libvirt {
    "uri" => (fixed),
    "domains" => (rows patch_vec domains),
    "xml_fetches" => (num xml_fetches),
    "age_ms" => (num age_ms),
});

table!(Domain {
    "name" => (fixed),
    "uuid" => (fixed),
    "id" => (opt id),
    "state" => (fixed),
    "reason" => (fixed),
    "vnics" => (rows patch_vec vnics),
    // Strings only (were a number added, its rows would take the generic path).
    "nova" => (fixed),
    "xml_error" => (fixed),
});

table!(Vnic {
    "mac" => (fixed),
    "target_dev" => (fixed),
    "bridge" => (fixed),
    "network" => (fixed),
    "kind" => (fixed),
    "model" => (fixed),
    "link_state" => (fixed),
    "mtu" => (opt mtu),
    "host_ifindex" => (opt host_ifindex),
    "host_ifname" => (fixed),
});

table!(Probes {
    "bridges" => (rows patch_vec bridges),
    "guests" => (rows patch_vec guests),
    "errors" => (fixed),
});

table!(GatewayProbe {
    "bridge" => (fixed),
    "vlan" => (opt vlan),
    "uplinks" => (fixed),
    "gateway" => (fixed),
    "gateway_source" => (fixed),
    "gateway_mac" => (fixed),
    "source_ip" => (fixed),
    "arp_sent" => (num arp_sent),
    "arp_answered" => (num arp_answered),
    "arp_unanswered" => (num arp_unanswered),
    "icmp_sent" => (num icmp_sent),
    "icmp_answered" => (num icmp_answered),
    "icmp_unanswered" => (num icmp_unanswered),
    "large_sent" => (num large_sent),
    "large_answered" => (num large_answered),
    "large_unanswered" => (num large_unanswered),
    "large_bytes" => (num large_bytes),
    "send_errors" => (num send_errors),
    "consecutive_unanswered" => (num consecutive_unanswered),
    "large_consecutive_unanswered" => (num large_consecutive_unanswered),
    "last_rtt_us" => (opt last_rtt_us),
    "last_answer_mono_ns" => (opt last_answer_mono_ns),
    "guest_arp_requests" => (num guest_arp_requests),
    "guest_arp_replies" => (num guest_arp_replies),
    "guest_arp_unanswered" => (num guest_arp_unanswered),
});

table!(GuestProbe {
    "iface" => (fixed),
    "mac" => (fixed),
    "ip" => (fixed),
    "ip_source" => (fixed),
    "sent" => (num sent),
    "answered" => (num answered),
    "unanswered" => (num unanswered),
    "consecutive_unanswered" => (num consecutive_unanswered),
    "last_answer_mono_ns" => (opt last_answer_mono_ns),
    "paused" => (fixed),
});

table!(Drops {
    "netns_inode" => (num netns_inode),
    "loaded_mono_ns" => (num loaded_mono_ns),
    "entries" => (rows patch_vec entries),
    "overflow" => (num overflow),
    "unattributed" => (num unattributed),
    "map_entries" => (num map_entries),
    "map_max_entries" => (num map_max_entries),
    "missed" => (num missed),
});

table!(DropCount {
    "ifindex" => (num ifindex),
    "interface" => (fixed),
    "reason" => (fixed),
    "protocol" => (num protocol),
    "count" => (num count),
});

table!(Snmp {
    "counters" => (sintmap counters),
});

/// The field names serde's derived `Deserialize` of `T` knows: it hands
/// them to `deserialize_struct`, where this stops it.
fn serde_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Grab(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Grab {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut g = Grab(None);
    let _ = T::deserialize(&mut g);
    g.0.unwrap_or(&[])
}

/// One row's plan: a setter per number, a patcher per group of children.
struct RowPlan<T> {
    ops: Vec<Op<T>>,
    nums: usize,
    /// Child groups in order, with the index of the number holding their
    /// count (None: one child row).
    groups: Vec<(Children<T>, Option<u32>)>,
}

enum Op<T> {
    One(Set<T>),
    Many(usize, SetMany<T>),
    /// Numbers of a field this type does not have (serde skips it too).
    Skip(usize),
}

/// Child rows of a field the type does not have: stepped over.
fn skip_rows<T>(_: &mut T, cx: &mut Cx, mut c: usize, n: u64) -> Option<usize> {
    for _ in 0..n {
        c = *cx.view.subtree_end.get(c)? as usize;
    }
    Some(c)
}

fn build<T: Patch>(shape: &[u8]) -> Option<RowPlan<T>> {
    let mut p = RowPlan {
        ops: Vec::new(),
        nums: 0,
        groups: Vec::new(),
    };
    let mut pos = 0;
    plan_map(shape, &mut pos, T::table(), &mut p)?;
    (pos == shape.len()).then_some(p)
}

/// Plans the MAP at `pos` (a struct of `table`'s type) into `p`.
fn plan_map<T>(b: &[u8], pos: &mut usize, table: &Table<T>, p: &mut RowPlan<T>) -> Option<()> {
    if *b.get(*pos)? != OP_MAP {
        return None;
    }
    *pos += 1;
    let n = get_varint(b, pos)?;
    let fields = &table.fields;
    if fields.len() > 64 {
        return None;
    }
    let mut seen = 0u64;
    // Shapes list fields in declaration order: look from the last match on.
    let mut at = 0;
    for _ in 0..n {
        let key = read_str(b, pos)?;
        let start = *pos;
        let info = value_info(b, pos).ok()?;
        let val = &b[start..*pos];
        let found = (0..fields.len())
            .map(|k| (at + k) % fields.len())
            .find(|&i| fields[i].name == key);
        let Some(i) = found else {
            if table.serde.contains(&key) {
                // A field of the type this table lacks: only the generic path knows it.
                return None;
            }
            if info.nums > 0 {
                p.ops.push(Op::Skip(info.nums as usize));
            }
            for &rc in &info.rows_counts {
                p.groups.push((skip_rows::<T>, Some(p.nums as u32 + rc)));
            }
            for _ in 0..info.fixed_children {
                p.groups.push((skip_rows::<T>, None));
            }
            p.nums += info.nums as usize;
            continue;
        };
        at = i + 1;
        if seen & (1 << i) != 0 {
            return None;
        }
        seen |= 1 << i;
        if info.nums == 0 && info.fixed_children == 0 {
            continue;
        }
        // Past any SOMEs: the value proper.
        let inner = &val[val.iter().take_while(|&&o| o == OP_SOME).count()..];
        let somes = val.len() - inner.len();
        match &fields[i].kind {
            Kind::Fixed => return None,
            Kind::Num { op, opt, set } => {
                if inner != [*op] || somes != *opt as usize {
                    return None;
                }
                p.ops.push(Op::One(*set));
                p.nums += 1;
            }
            Kind::Inline { fields } => {
                let mut q = 0;
                plan_map(val, &mut q, fields(), p)?;
                if q != val.len() {
                    return None;
                }
            }
            Kind::SintMap { set } => {
                let k = sint_map(val)?;
                p.ops.push(Op::Many(k, *set));
                p.nums += k;
            }
            Kind::Rows { count, children } => {
                if inner != [OP_ROWS] || somes > 1 {
                    return None;
                }
                p.groups.push((*children, Some(p.nums as u32)));
                p.ops.push(Op::One(*count));
                p.nums += 1;
            }
            Kind::Row { children } => {
                if inner != [OP_ROW] || somes > 1 {
                    return None;
                }
                p.groups.push((*children, None));
            }
        }
    }
    Some(())
}

/// A map of string keys to SINTs whose keys rise strictly (as a `BTreeMap`
/// iterates them): its number count.
fn sint_map(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    if *b.first()? != OP_MAP {
        return None;
    }
    pos += 1;
    let n = get_varint(b, &mut pos)? as usize;
    let mut prev: Option<&str> = None;
    for _ in 0..n {
        let k = read_str(b, &mut pos)?;
        if prev.is_some_and(|p| p >= k) || *b.get(pos)? != OP_SINT {
            return None;
        }
        pos += 1;
        prev = Some(k);
    }
    (pos == b.len()).then_some(n)
}

/// The state of one patch: the record's rows and the plans per row.
pub(crate) struct Cx<'v, 'a> {
    view: &'v RowsView<'a>,
    plans: &'v mut Vec<Option<Box<dyn Any>>>,
}

/// Patches `t` from row `r` and its subtree; gives the row after it.
fn patch_row<T: Patch>(t: &mut T, cx: &mut Cx, r: usize) -> Option<usize> {
    let mut plan = match cx.plans.get_mut(r)?.take() {
        Some(p) => p,
        None => Box::new(build::<T>(cx.view.shapes[r])?),
    };
    let res = apply(plan.downcast_mut::<RowPlan<T>>()?, t, cx, r);
    cx.plans[r] = Some(plan);
    res
}

fn apply<T>(plan: &RowPlan<T>, t: &mut T, cx: &mut Cx, r: usize) -> Option<usize> {
    let (lo, hi) = (
        *cx.view.num_off.get(r)? as usize,
        *cx.view.num_off.get(r + 1)? as usize,
    );
    let nums = cx.view.nums.get(lo..hi)?;
    if nums.len() != plan.nums {
        return None;
    }
    let mut j = 0;
    for op in &plan.ops {
        match op {
            Op::One(set) => {
                set(t, nums[j])?;
                j += 1;
            }
            Op::Many(k, set) => {
                set(t, &nums[j..j + k])?;
                j += k;
            }
            Op::Skip(k) => j += k,
        }
    }
    let mut c = r + 1;
    for (children, count) in &plan.groups {
        let n = count.map_or(1, |i| nums[i as usize]);
        c = children(t, cx, c, n)?;
    }
    (c == *cx.view.subtree_end.get(r)? as usize).then_some(c)
}

fn patch_vec<U: Patch>(v: &mut [U], cx: &mut Cx, mut c: usize, n: u64) -> Option<usize> {
    if v.len() as u64 != n {
        return None;
    }
    for u in v {
        c = patch_row(u, cx, c)?;
    }
    Some(c)
}

/// A section without a table: read again from its own row.
fn generic_row<U: DeserializeOwned>(u: &mut U, cx: &mut Cx, c: usize) -> Option<usize> {
    *u = decode_row(cx.view, &Projection::all(), c).ok()?;
    Some(*cx.view.subtree_end.get(c)? as usize)
}

fn generic_vec<U: DeserializeOwned>(
    v: &mut [U],
    cx: &mut Cx,
    mut c: usize,
    n: u64,
) -> Option<usize> {
    if v.len() as u64 != n {
        return None;
    }
    for u in v {
        c = generic_row(u, cx, c)?;
    }
    Some(c)
}

/// Which rows a decoded record has: its keyframe (a number unique within a
/// scan), its row ids and the bytes of its own extra shapes. Equal keys,
/// equal row shapes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RowsKey {
    kf_gen: u64,
    ids: Vec<u32>,
    extras: Vec<u8>,
}

impl RowsKey {
    fn matches(&self, kf_gen: u64, rec: &Decoded, delta: bool) -> bool {
        self.kf_gen == kf_gen
            && self.ids == rec.ids()
            && (if delta {
                rec.own_shapes_eq(&self.extras)
            } else {
                self.extras.is_empty()
            })
    }
    fn set(&mut self, kf_gen: u64, rec: &Decoded, delta: bool) {
        self.kf_gen = kf_gen;
        self.ids.clear();
        self.ids.extend_from_slice(rec.ids());
        self.extras.clear();
        if delta {
            rec.own_shapes_into(&mut self.extras);
        }
    }
}

struct Slot {
    sample: Box<Sample>,
    /// The rows it was decoded from (None: from JSON or a projection).
    key: Option<RowsKey>,
}

/// The last two samples of a scan (the consumer gets both: rates need the
/// previous one), reused for the next ones.
#[derive(Default)]
pub(crate) struct Recent {
    slots: [Option<Slot>; 2],
    /// The slot of the last sample handed out.
    cur: usize,
    next_gen: u64,
    plans_key: Option<RowsKey>,
    plans: Vec<Option<Box<dyn Any>>>,
    /// A plan failed for `plans_key`: no fast path until the rows change.
    plans_failed: bool,
    /// Records read by patching and by the generic path.
    pub patched: u64,
    pub generic: u64,
}

impl Recent {
    /// A number for a keyframe just decoded.
    pub fn keyframe_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// The last sample handed out and the one before it.
    pub fn pair(&self) -> Option<(&Sample, Option<&Sample>)> {
        let cur = self.slots[self.cur].as_ref()?;
        let prev = self.slots[1 - self.cur].as_ref().map(|s| &*s.sample);
        Some((&cur.sample, prev))
    }

    /// A sample decoded elsewhere (JSON, events' neighbours) becomes the last one.
    pub fn put(&mut self, sample: Box<Sample>) {
        let t = 1 - self.cur;
        self.slots[t] = Some(Slot { sample, key: None });
        self.cur = t;
    }

    /// Reads a format-2 record (`delta`: not its keyframe) into the slot of
    /// the sample before the last: patched when that sample has the same
    /// rows, generically otherwise. Err: the generic path's error.
    pub fn table(
        &mut self,
        kf_gen: u64,
        rec: &Decoded,
        delta: bool,
        view: &RowsView,
        proj: &Projection,
    ) -> Result<(), super::rows::DeError> {
        let t = 1 - self.cur;
        let all = *proj == Projection::all();
        if all {
            if let Some(slot) = self.slots[t].as_mut() {
                if slot
                    .key
                    .as_ref()
                    .is_some_and(|k| k.matches(kf_gen, rec, delta))
                {
                    let same_plans = self
                        .plans_key
                        .as_ref()
                        .is_some_and(|k| k.matches(kf_gen, rec, delta));
                    if !same_plans {
                        let mut k = self.plans_key.take().unwrap_or_default();
                        k.set(kf_gen, rec, delta);
                        self.plans_key = Some(k);
                        self.plans.clear();
                        self.plans.resize_with(view.shapes.len(), || None);
                        self.plans_failed = false;
                    }
                    if !self.plans_failed {
                        let mut cx = Cx {
                            view,
                            plans: &mut self.plans,
                        };
                        if patch_row(&mut *slot.sample, &mut cx, 0) == Some(view.shapes.len()) {
                            self.patched += 1;
                            self.cur = t;
                            return Ok(());
                        }
                        // Half patched: what is there is no sample any more.
                        self.plans_failed = true;
                    }
                }
            }
        }
        let old = self.slots[t].take();
        let sample = Box::new(super::rows::decode_value::<Sample>(view, proj)?);
        self.generic += 1;
        let key = all.then(|| {
            let mut k = old.and_then(|s| s.key).unwrap_or_default();
            k.set(kf_gen, rec, delta);
            k
        });
        self.slots[t] = Some(Slot { sample, key });
        self.cur = t;
        Ok(())
    }
}

/// `Snmp::counters`' values, in key order.
fn set_sint_map(m: &mut BTreeMap<String, i64>, vals: &[u64]) -> Option<()> {
    if m.len() != vals.len() {
        return None;
    }
    for (x, &v) in m.values_mut().zip(vals) {
        *x = v as i64;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table names exactly the fields serde knows for its type: a
    /// field added to a `Sample` type must be added here too (until then
    /// rows with it take the generic path).
    #[test]
    fn tables_list_every_field_of_their_type() {
        fn check<T>(what: &str, t: &Table<T>) {
            let mut ours: Vec<&str> = t.fields.iter().map(|f| f.name).collect();
            let mut theirs: Vec<&str> = t.serde.to_vec();
            ours.sort();
            theirs.sort();
            assert!(!theirs.is_empty(), "{what}: serde lists no fields");
            assert_eq!(ours, theirs, "{what}: the patch table and the type differ");
        }
        check("Sample", Sample::table());
        check("Link", Link::table());
        check("LinkStats", Link::stats_table());
        check("Bridge", Bridge::table());
        check("BridgePort", BridgePort::table());
        check("PortVlan", PortVlan::table());
        check("FdbEntry", FdbEntry::table());
        check("Qdisc", Qdisc::table());
        check("Snmp", Snmp::table());
        check("SoftnetCpu", SoftnetCpu::table());
        check("Libvirt", Libvirt::table());
        check("Domain", Domain::table());
        check("Vnic", Vnic::table());
        check("Probes", Probes::table());
        check("GatewayProbe", GatewayProbe::table());
        check("GuestProbe", GuestProbe::table());
        check("Drops", Drops::table());
        check("DropCount", DropCount::table());
    }

    /// What a newer writer may store: a section this version does not
    /// know (with rows), a number it does not know in row 0 and in every
    /// link. Read as a `Sample`, they are skipped exactly as serde skips them.
    #[test]
    fn shapes_unknown_to_this_version_are_patched_as_the_generic_path_reads_them() {
        use crate::store::table::{decode_delta, decode_keyframe, view, TableEncoder};
        #[derive(serde::Serialize)]
        struct NewerLink {
            #[serde(flatten)]
            link: Link,
            offload_drops: u64,
        }
        #[derive(serde::Serialize)]
        struct DropReason {
            reason: String,
            count: u64,
            by_cpu: Vec<CpuCount>,
        }
        #[derive(serde::Serialize)]
        struct CpuCount {
            cpu: u32,
            n: u64,
        }
        #[derive(serde::Serialize)]
        struct Newer {
            version: u32,
            seq: u64,
            ts_unix_ns: i64,
            mono_ns: u64,
            host: String,
            links: Option<Vec<NewerLink>>,
            drop_reasons: Option<Vec<DropReason>>,
            extra_counter: u64,
            snmp: Option<Snmp>,
        }
        let newer = |seq: u64| Newer {
            version: 1,
            seq,
            ts_unix_ns: seq as i64 * 1_000_000_007,
            mono_ns: seq * 1_000_000_000,
            host: "n1".into(),
            links: Some(
                (0..3)
                    .map(|i| NewerLink {
                        link: Link {
                            ifindex: i + 1,
                            name: format!("tap{i}"),
                            master: Some(1),
                            stats: crate::sample::LinkStats {
                                rx_bytes: seq * 1000 + i as u64,
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                        offload_drops: seq * 5,
                    })
                    .collect(),
            ),
            drop_reasons: Some(vec![DropReason {
                reason: "NO_SOCKET".into(),
                count: seq,
                by_cpu: (0..2)
                    .map(|cpu| CpuCount {
                        cpu,
                        n: seq + cpu as u64,
                    })
                    .collect(),
            }]),
            extra_counter: seq * 3,
            snmp: Some(Snmp {
                counters: [("Ip.InDiscards".to_string(), -(seq as i64))].into(),
            }),
        };
        let mut enc = TableEncoder::new(3);
        let e0 = enc.encode(&newer(1), false).unwrap();
        let kf = decode_keyframe(&e0.payload).unwrap();
        enc.commit(e0, 100);
        let mut recent = Recent::default();
        let gen = recent.keyframe_gen();
        let all = Projection::all();
        recent
            .table(gen, &kf, false, &view(None, &kf), &all)
            .unwrap();
        for seq in 2..12 {
            let e = enc.encode(&newer(seq), false).unwrap();
            assert!(!e.keyframe);
            let d = decode_delta(&kf, 100, &e.payload).unwrap();
            let v = view(Some(&kf), &d);
            let want: Sample = crate::store::rows::decode_value(&v, &all).unwrap();
            assert_eq!(
                want.links.as_ref().unwrap()[2].stats.rx_bytes,
                seq * 1000 + 2
            );
            recent.table(gen, &d, true, &v, &all).unwrap();
            let (got, prev) = recent.pair().unwrap();
            assert_eq!(*got, want, "seq {seq}");
            assert_eq!(prev.map(|p| p.seq), Some(seq - 1));
        }
        assert!(recent.patched >= 8, "{} patched", recent.patched);
    }
}
