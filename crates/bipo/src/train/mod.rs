//! Training steering vectors.

pub mod bipo;
pub mod config;
pub mod rundir;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{Event, Trainer};
