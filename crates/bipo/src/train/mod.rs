//! Training steering vectors.

pub mod bipo;
pub mod config;
pub mod fused;
pub mod ops;
pub mod rundir;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{Event, Trainer};
