pub mod bake;
pub mod bench;
pub mod bench_train;
pub mod chat;
pub mod generate;
pub mod inspect;
pub mod train;
pub mod vector;
