//! hvflight: a flight recorder for the network of a KVM/libvirt hypervisor.
//!
//! The pipeline, one module per stage (see docs/architecture.md):
//!
//! ```text
//! source/ (thin OS access) ─► kernel/ (pure parsers) ─► collect/ ─► sample/ ─► model (rates)
//! events/ (rtnetlink, kmsg, libvirt) ─────────────────────────────────────┘
//! agent (the run loop)   config   lab/ (namespace lab shared by tests, demo, bench)
//! bundle/ ─► upload/ (spool, object-store client, uploader)
//! ```

pub mod agent;
pub mod analyze;
pub mod blast_radius;
pub mod bundle;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod commands;
pub mod config;
pub mod control;
pub mod demo;
pub mod detect;
pub mod events;
pub mod kernel;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod sample;
pub mod source;
pub mod store;
pub mod upload;
pub mod wake;
