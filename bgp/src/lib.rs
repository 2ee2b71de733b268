
pub mod wire;
