//! What each subcommand does; main.rs only parses and dispatches.

pub mod clients;
pub mod generate;
pub mod run;
pub mod upload;
