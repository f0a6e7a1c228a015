//! Pure parsers, one file per kernel interface. They take `&str` or `impl Read` and never touch the OS; tests feed them captured files from tests/fixtures/.
pub mod stat_table;
pub mod softnet;
pub mod snmp;
pub mod softirqs;
pub mod kmsg;
pub mod domain_xml;
