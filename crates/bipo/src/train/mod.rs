//! Training steering vectors.

pub mod bipo;
pub mod config;
pub mod objective;
pub mod pipeline;
pub mod reps;
pub mod rundir;
pub mod trainer;

pub use config::{default_layer, TrainConfig};
pub use trainer::{Event, Trainer};
