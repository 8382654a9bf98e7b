//! The hostile-input catalogue: what an adversarial user can do to the `bipo` command,
//! one test per case. Every case asserts the exit code, a one-line message naming the
//! file, line, flag or value, that no input changed and that nothing half-written is
//! left behind. Grouped by class of fault:
//!
//! - `outputs`: an output path that is an input (any command, through links and `..`).
//! - `runs`: training folders: existing runs, locks, concurrent runs, resume with other
//!   inputs, `kill -9` at random points.
//! - `numbers`: numeric flags out of range, absurd multipliers, NaN/inf inside the
//!   forward pass.
//! - `streams`: closed or full standard output, chat sessions that must survive a bad line.
//! - `text`: non-UTF-8 and huge inputs, malformed data, prompt injection, messages.
//! - `secrets`: keys passed by flag or environment never reach a file or a message.
//! - `models`: unknown architectures, missing tensors, baking into the wrong family.
//! - `serve`: server settings refused before listening.

#[path = "../common/mod.rs"]
mod common;
mod models;
mod numbers;
mod outputs;
mod runs;
mod secrets;
mod serve;
mod streams;
mod support;
mod text;
