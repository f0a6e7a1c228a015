//! Thin OS access: /proc and /sys roots, rtnetlink sockets, libvirt connections, network namespaces. No logic worth a unit test lives here.
pub mod bpf;
pub mod fdb_watch;
pub mod libvirt;
pub mod libvirt_conn;
pub mod link_watch;
pub mod netlink;
pub mod netns;
pub mod nfgen;
pub mod packet;
pub mod procfs;
