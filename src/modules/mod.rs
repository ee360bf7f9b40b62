//! Trainable modules on top of the kernels: LoRA adapters, the ordered registry of trainable
//! parameters that the Spry planner splits among clients, and PEFT adapter files.

pub mod linear;
pub mod lora;
pub mod norm;
pub mod pass;
pub mod peft;
pub mod trainable;

pub use linear::{AdapterSlot, DropoutKey, FrozenLinear};
pub use lora::{LoraConfig, parse_layers};
pub use norm::{LayerNorm, RmsNorm};
pub use pass::Pass;
pub use peft::{
    PeftAdapter, load_peft_adapter, load_peft_tensors, read_peft_config, save_peft_adapter,
};
pub use trainable::{Directions, ParamGrads, Trainable, Unit};
