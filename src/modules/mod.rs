//! Trainable modules on top of the kernels: LoRA adapters and the ordered registry of trainable
//! parameters that the Spry planner splits among clients.

pub mod linear;
pub mod lora;
pub mod trainable;

pub use linear::{AdapterSlot, DropoutKey, FrozenLinear};
pub use lora::LoraConfig;
pub use trainable::{Directions, Trainable, Unit};
