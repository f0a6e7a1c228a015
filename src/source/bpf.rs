//! Thin OS access for the drop-reason program: checks the kernel's BTF,
//! loads and attaches src/bpf/drops.bpf.c (built by build.rs) with libbpf,
//! and reads its maps. Decoding lives in kernel/drop_reasons.rs, the
//! section in collect/drops.rs.
//!
//! Before loading, the kernel's BTF must name `enum skb_drop_reason` and the
//! `skb:kfree_skb` tracepoint must carry it (Linux >= 5.17): the verifier
//! would refuse the program otherwise, with a message less clear than ours.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::btf::types::{Enum, FuncProto, Ptr, Typedef};
use libbpf_rs::btf::{Btf, BtfType, ReferencesType};
use libbpf_rs::{MapCore, ObjectBuilder};
use thiserror::Error;

use crate::kernel::drop_reasons::{self, DropKey, ReasonNames, KEY_SIZE};

/// The clang-built object (see build.rs).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/drops.bpf.o"));

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("no kernel BTF at {path} ({msg}): drop reasons need a kernel built with CONFIG_DEBUG_INFO_BTF")]
    Btf { path: String, msg: String },
    #[error("the kernel's BTF ({path}) has no `enum skb_drop_reason`: the kernel predates drop reasons (Linux < 5.17)")]
    NoReasonEnum { path: String },
    #[error(
        "the kernel's skb:kfree_skb tracepoint has no `reason` argument ({path}): Linux < 5.17"
    )]
    NoReasonField { path: String },
    #[error("{what}: permission denied: loading BPF needs CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8): {msg}")]
    Denied { what: String, msg: String },
    #[error("{what}: {msg}")]
    Libbpf { what: String, msg: String },
    #[error("reading map {map}: {source}")]
    Read {
        map: &'static str,
        source: std::io::Error,
    },
}

fn libbpf_err(what: &str, e: libbpf_rs::Error) -> BpfError {
    let msg = format!("{e:#}");
    if e.kind() == libbpf_rs::ErrorKind::PermissionDenied {
        BpfError::Denied {
            what: what.into(),
            msg,
        }
    } else {
        BpfError::Libbpf {
            what: what.into(),
            msg,
        }
    }
}

/// What the kernel's BTF says about drop reasons.
pub struct KernelBtf {
    pub names: ReasonNames,
}

/// Reads `enum skb_drop_reason` and checks that `btf_trace_kfree_skb`
/// (the tracepoint's prototype: ctx, skb, location, reason, …) has it.
pub fn check_btf(path: &Path) -> Result<KernelBtf, BpfError> {
    let p = path.display().to_string();
    if let Err(e) = std::fs::metadata(path) {
        return Err(BpfError::Btf {
            path: p,
            msg: e.to_string(),
        });
    }
    let btf = Btf::from_path(path).map_err(|e| BpfError::Btf {
        path: p.clone(),
        msg: format!("{e:#}"),
    })?;
    let en: Enum<'_> = btf
        .type_by_name("skb_drop_reason")
        .ok_or_else(|| BpfError::NoReasonEnum { path: p.clone() })?;
    let members: Vec<(String, i64)> = en
        .iter()
        .map(|m| {
            (
                m.name
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                m.value,
            )
        })
        .collect();
    let names = ReasonNames::from_members(members.iter().map(|(n, v)| (n.as_str(), *v)));
    let enum_id = en.type_id();
    let has_reason = (|| -> Option<bool> {
        let td: Typedef<'_> = btf.type_by_name("btf_trace_kfree_skb")?;
        let ptr: Ptr<'_> = btf.type_by_id(td.referenced_type_id())?;
        let proto: FuncProto<'_> = btf.type_by_id(ptr.referenced_type_id())?;
        let reason = proto.get(3)?;
        let ty: BtfType<'_> = btf.type_by_id(reason.ty)?;
        Some(ty.skip_mods_and_typedefs().type_id() == enum_id)
    })();
    if has_reason != Some(true) {
        return Err(BpfError::NoReasonField { path: p });
    }
    Ok(KernelBtf { names })
}

/// Options of one load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    pub max_entries: u32,
}

/// The loaded, attached program and its maps. Dropping it detaches.
pub struct DropProbe {
    _link: libbpf_rs::Link,
    _object: libbpf_rs::Object,
    drops: OwnedFd,
    overflow: OwnedFd,
    prog: OwnedFd,
    pub names: ReasonNames,
    pub max_entries: u32,
    ncpu: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

/// One read of the maps: every key with its count summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct RawDrops {
    pub counts: Vec<(DropKey, u64)>,
    pub overflow: u64,
    pub missed: u64,
}

/// Routes libbpf's own messages to tracing (it prints to stderr otherwise).
fn libbpf_log(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
        _ => tracing::trace!(target: "libbpf", "{msg}"),
    }
}

impl DropProbe {
    pub fn load(opts: &LoadOptions) -> Result<DropProbe, BpfError> {
        let kbtf = check_btf(&opts.btf_path)?;
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_log)));
        let mut builder = ObjectBuilder::default();
        if opts.btf_path != Path::new(DEFAULT_BTF) {
            // CO-RE relocations against this BTF instead of the kernel's own.
            builder
                .btf_custom_path(&opts.btf_path)
                .map_err(|e| libbpf_err("BTF path", e))?;
        }
        let mut open = builder
            .open_memory(OBJECT)
            .map_err(|e| libbpf_err("opening the BPF object", e))?;
        for mut m in open.maps_mut() {
            if m.name() == "drops" {
                m.set_max_entries(opts.max_entries.max(1))
                    .map_err(|e| libbpf_err("sizing map drops", e))?;
            }
        }
        let object = open
            .load()
            .map_err(|e| libbpf_err("loading the BPF program (verifier)", e))?;
        let mut link = None;
        let mut prog_fd = None;
        for p in object.progs_mut() {
            if p.name() == "count_drop" {
                prog_fd = Some(
                    p.as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| BpfError::Libbpf {
                            what: "program fd".into(),
                            msg: e.to_string(),
                        })?,
                );
                link = Some(
                    p.attach()
                        .map_err(|e| libbpf_err("attaching to tp_btf/kfree_skb", e))?,
                );
            }
        }
        let (Some(link), Some(prog)) = (link, prog_fd) else {
            return Err(BpfError::Libbpf {
                what: "BPF object".into(),
                msg: "no program count_drop".into(),
            });
        };
        let map_fd = |name: &str| -> Result<OwnedFd, BpfError> {
            let m = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| BpfError::Libbpf {
                    what: "BPF object".into(),
                    msg: format!("no map {name}"),
                })?;
            m.as_fd()
                .try_clone_to_owned()
                .map_err(|e| BpfError::Libbpf {
                    what: format!("map {name} fd"),
                    msg: e.to_string(),
                })
        };
        let drops = map_fd("drops")?;
        let overflow = map_fd("overflow")?;
        let ncpu = libbpf_rs::num_possible_cpus().map_err(|e| libbpf_err("possible CPUs", e))?;
        Ok(DropProbe {
            _link: link,
            _object: object,
            drops,
            overflow,
            prog,
            names: kbtf.names,
            max_entries: opts.max_entries.max(1),
            ncpu,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// Reads every key of the `drops` map (batched: a handful of syscalls
    /// for thousands of keys), the overflow counter and the missed runs.
    pub fn read(&mut self) -> Result<RawDrops, BpfError> {
        let vsize = 8 * self.ncpu;
        let mut out = RawDrops::default();
        match self.read_batched(vsize, &mut out.counts) {
            Ok(()) => {}
            // Kernels before 5.6 have no batch ops: one key at a time.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524)
                ) =>
            {
                out.counts.clear();
                self.read_keywise(vsize, &mut out.counts)
                    .map_err(|source| BpfError::Read {
                        map: "drops",
                        source,
                    })?;
            }
            Err(source) => {
                return Err(BpfError::Read {
                    map: "drops",
                    source,
                })
            }
        }
        let mut v = vec![0u8; vsize];
        let zero = 0u32.to_ne_bytes();
        // SAFETY: key is 4 bytes (the array's key size), v holds one u64 per possible CPU.
        let r = unsafe {
            libbpf_sys::bpf_map_lookup_elem(
                self.overflow.as_raw_fd(),
                zero.as_ptr().cast(),
                v.as_mut_ptr().cast(),
            )
        };
        if r < 0 {
            return Err(BpfError::Read {
                map: "overflow",
                source: std::io::Error::from_raw_os_error(-r),
            });
        }
        out.overflow = drop_reasons::sum_percpu(&v);
        out.missed = self.recursion_misses();
        Ok(out)
    }

    fn read_batched(&mut self, vsize: usize, out: &mut Vec<(DropKey, u64)>) -> std::io::Result<()> {
        let mut chunk: usize = 1024.min(self.max_entries as usize).max(16);
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            elem_flags: 0,
            flags: 0,
        };
        // The hash map's batch cursor is a bucket index (u32); 8 bytes to spare.
        let mut cursor = [0u8; 8];
        let mut next = [0u8; 8];
        let mut first = true;
        loop {
            self.keys.resize(chunk * KEY_SIZE, 0);
            self.values.resize(chunk * vsize, 0);
            let mut count = chunk as u32;
            // SAFETY: buffers hold `count` keys and `count` per-CPU values;
            // cursor/next hold the kernel's u32 batch token.
            let r = unsafe {
                libbpf_sys::bpf_map_lookup_batch(
                    self.drops.as_raw_fd(),
                    if first {
                        std::ptr::null_mut()
                    } else {
                        cursor.as_mut_ptr().cast()
                    },
                    next.as_mut_ptr().cast(),
                    self.keys.as_mut_ptr().cast(),
                    self.values.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let done = match r {
                0 => false,
                e if -e == libc::ENOENT => true,
                e if -e == libc::ENOSPC && count == 0 => {
                    // One bucket holds more keys than the chunk: bigger chunk.
                    chunk *= 2;
                    continue;
                }
                e if -e == libc::EINTR || -e == libc::EAGAIN => continue,
                e => return Err(std::io::Error::from_raw_os_error(-e)),
            };
            for i in 0..count as usize {
                let k = &self.keys[i * KEY_SIZE..(i + 1) * KEY_SIZE];
                let v = &self.values[i * vsize..(i + 1) * vsize];
                if let Some(key) = DropKey::from_bytes(k) {
                    out.push((key, drop_reasons::sum_percpu(v)));
                }
            }
            if done {
                return Ok(());
            }
            cursor = next;
            first = false;
        }
    }

    fn read_keywise(&self, vsize: usize, out: &mut Vec<(DropKey, u64)>) -> std::io::Result<()> {
        let mut key = [0u8; KEY_SIZE];
        let mut next = [0u8; KEY_SIZE];
        let mut v = vec![0u8; vsize];
        let mut first = true;
        loop {
            // SAFETY: key/next are KEY_SIZE bytes, the map's key size.
            let r = unsafe {
                libbpf_sys::bpf_map_get_next_key(
                    self.drops.as_raw_fd(),
                    if first {
                        std::ptr::null()
                    } else {
                        key.as_ptr().cast()
                    },
                    next.as_mut_ptr().cast(),
                )
            };
            if r == -libc::ENOENT {
                return Ok(());
            }
            if r < 0 {
                return Err(std::io::Error::from_raw_os_error(-r));
            }
            // SAFETY: v holds one u64 per possible CPU.
            let r = unsafe {
                libbpf_sys::bpf_map_lookup_elem(
                    self.drops.as_raw_fd(),
                    next.as_ptr().cast(),
                    v.as_mut_ptr().cast(),
                )
            };
            if r == 0 {
                if let Some(k) = DropKey::from_bytes(&next) {
                    out.push((k, drop_reasons::sum_percpu(&v)));
                }
            }
            key = next;
            first = false;
        }
    }

    /// Removes keys (interfaces gone, other namespaces) so the map keeps room.
    pub fn delete(&self, keys: &[DropKey]) {
        for k in keys {
            let b = k.to_bytes();
            // SAFETY: b is KEY_SIZE bytes, the map's key size.
            unsafe {
                libbpf_sys::bpf_map_delete_elem(self.drops.as_raw_fd(), b.as_ptr().cast());
            }
        }
    }

    /// Sets a key's count on every CPU (benchmarks fill the map this way).
    pub fn set(&self, key: DropKey, per_cpu: u64) -> std::io::Result<()> {
        let v: Vec<u8> = (0..self.ncpu).flat_map(|_| per_cpu.to_ne_bytes()).collect();
        let b = key.to_bytes();
        // SAFETY: b is KEY_SIZE bytes, v one u64 per possible CPU.
        let r = unsafe {
            libbpf_sys::bpf_map_update_elem(
                self.drops.as_raw_fd(),
                b.as_ptr().cast(),
                v.as_ptr().cast(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
        Ok(())
    }

    /// The program's run count and run time, ns (non-zero only while BPF
    /// statistics are on: see `enable_stats`), and the kernel's recursion misses.
    pub fn prog_stats(&self) -> (u64, u64, u64) {
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a zeroed bpf_prog_info of `len` bytes; no arrays requested.
        let r = unsafe {
            libbpf_sys::bpf_prog_get_info_by_fd(self.prog.as_raw_fd(), &mut info, &mut len)
        };
        if r < 0 {
            return (0, 0, 0);
        }
        (info.run_cnt, info.run_time_ns, info.recursion_misses)
    }

    fn recursion_misses(&self) -> u64 {
        self.prog_stats().2
    }
}

/// Turns on the kernel's BPF run-time statistics while the returned fd is
/// open (BPF_ENABLE_STATS: no global sysctl is changed). For benchmarks.
pub fn enable_stats() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper; returns an fd or -errno.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: fd was just returned to us and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Inode of the calling thread's network namespace (the one the agent watches).
pub fn current_netns_inode() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_without_drop_reasons_is_refused_with_why() {
        // Our own object's BTF is real BTF without the kernel's drop-reason
        // types — as on a kernel < 5.17.
        let obj = Path::new(concat!(env!("OUT_DIR"), "/drops.bpf.o"));
        let e = check_btf(obj).err().expect("refused").to_string();
        assert!(e.contains("has no `enum skb_drop_reason`"), "{e}");
        let e = check_btf(Path::new("/nonexistent/btf"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.starts_with("no kernel BTF at /nonexistent/btf"), "{e}");
    }
}
