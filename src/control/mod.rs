//! The control socket: a Unix socket (root and one group only) through which
//! `hvflight tail` and `hvflight status` talk to the running agent. The
//! protocol is JSON lines, versioned; it is documented in
//! docs/control-protocol.md.
//!
//! One request line from the client, then lines from the server:
//! - `{"v":1,"cmd":"status"}` → one status object, then the server closes;
//! - `{"v":1,"cmd":"tail"}` → a `tick` per sample and every event, as they
//!   happen, each with "ts" and "kind", until the client goes away;
//! - `{"v":1,"cmd":"trigger","reason":"…"}` → once the bundle is on disk,
//!   `{"kind":"triggered","id":…,"bundle":…}`;
//! - anything else → one `{"kind":"error",…}` line, then the server closes.
//!
//! A slow or stuck client never slows sampling: each client has a bounded
//! queue and its own writer thread; when the queue overflows the oldest
//! lines are dropped and the client gets `{"kind":"dropped","count":N}`
//! before the next line it receives.

pub mod client;
pub mod server;
pub mod tick;

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Request {
    pub v: u32,
    pub cmd: String,
    /// For "trigger": why (shown in the bundle's manifest).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For "trigger": support case label recorded in the manifest (and the upload key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub case: String,
}
