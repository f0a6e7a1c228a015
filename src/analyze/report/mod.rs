//! The report's three forms: text (the terminal at 3 a.m.), JSON (scripts
//! and monitoring; fields documented in docs/analyzer.md) and one
//! self-contained HTML page with charts (a laptop, a week later).

pub mod html;
pub mod json;
pub mod text;
