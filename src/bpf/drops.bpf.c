// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// hvflight's drop-reason counter: one run per skb:kfree_skb (the kernel
// freeing a packet it dropped, Linux >= 5.17 says why in `reason`). Counts
// in a per-CPU hash keyed by (network namespace, interface, reason,
// protocol); nothing is sent to userspace per packet — the agent reads the
// map once per sample. When the map is full a new key is not inserted and
// the drop is counted in `overflow` instead, so memory stays bounded.
//
// The license string must be GPL-compatible for the kernel to accept a
// tracing program; this file is dual-licensed for that reason.

#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define EEXIST 17

// Mirrored by `DropKey` in src/kernel/drop_reasons.rs (16 bytes, no padding holes).
struct drop_key {
	__u32 netns;     // inode of the network namespace (0: no device and no socket)
	__u32 ifindex;   // skb->dev->ifindex, 0 when the skb has no device
	__u32 reason;    // enum skb_drop_reason, named from the kernel's BTF by userspace
	__u16 protocol;  // skb->protocol in host order (0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP)
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	// Overridden by the loader (config drops.max_entries) before load.
	__uint(max_entries, 8192);
	__type(key, struct drop_key);
	__type(value, __u64);
} drops SEC(".maps");

// [0] drops not counted because `drops` was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

// tp_btf hands the program typed kernel pointers: plain loads through them
// are allowed (the verifier turns them into fault-safe loads), cheaper than
// bpf_probe_read_kernel per field. Their offsets are CO-RE relocations
// (preserve_access_index in vmlinux_min.h).
static __always_inline __u32 netns_of(struct sk_buff *skb, struct net_device *dev)
{
	struct net *net = 0;

	if (dev) {
		net = dev->nd_net.net;
	} else {
		struct sock *sk = skb->sk;
		if (sk)
			net = sk->__sk_common.skc_net.net;
	}
	return net ? net->ns.inum : 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(count_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct drop_key key = {};
	struct net_device *dev = skb->dev;
	__u64 one = 1, *v;
	__u32 zero = 0;
	long err;

	key.reason = reason;
	key.protocol = bpf_ntohs(skb->protocol);
	if (dev)
		key.ifindex = dev->ifindex;
	key.netns = netns_of(skb, dev);

	v = bpf_map_lookup_elem(&drops, &key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return 0;
	}
	err = bpf_map_update_elem(&drops, &key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		// Another CPU inserted the key meanwhile.
		v = bpf_map_lookup_elem(&drops, &key);
		if (v)
			__sync_fetch_and_add(v, 1);
		return 0;
	}
	if (err) {
		v = bpf_map_lookup_elem(&overflow, &zero);
		if (v)
			__sync_fetch_and_add(v, 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
