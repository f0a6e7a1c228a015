//! Pure parsers, one file per kernel interface. They take `&str` or `impl Read` and never touch the OS; tests feed them captured files from tests/fixtures/.
pub mod bonding;
pub mod buddyinfo;
pub mod domain_xml;
pub mod drop_reasons;
pub mod kmsg;
pub mod proc_error;
pub mod procfs_lines;
pub mod snmp;
pub mod softirqs;
pub mod softnet;
pub mod statfile;
