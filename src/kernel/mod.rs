//! Pure parsers, one file per kernel interface. They take `&str` or `impl Read` and never touch the OS; tests feed them captured files from tests/fixtures/.
pub mod domain_xml;
pub mod kmsg;
pub mod snmp;
pub mod softirqs;
pub mod softnet;
pub mod stat_table;
