//! The one error type of the /proc text parsers in kernel/: the 1-based line
//! the parser gave up on and why. The collector adds the path, so a failure
//! reads `/proc/net/snmp:24: …` — enough to find the bad line in a bundle.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {msg}")]
pub struct LineError {
    /// 1-based; 0 means "the file as a whole" (e.g. a required key is missing).
    pub line: usize,
    pub msg: String,
}

impl LineError {
    pub fn new(line: usize, msg: impl Into<String>) -> Self {
        LineError {
            line,
            msg: msg.into(),
        }
    }
}
