//! Models: configuration from metadata, weights by name, and the one forward pass written
//! against the [`Backend`] trait.

pub(crate) mod backend;
mod config;
mod cpu_backend;
mod forward;
mod weights;

pub use backend::Backend;
pub use config::{Activation, Arch, ModelConfig, RopeKind, RopeParams};
pub use cpu_backend::{tensor_bytes, CpuAct, CpuBackend, CpuWeight, PendingCpuWeight};
pub use forward::Logits;
pub use weights::{same_shape, LayerWeights, WeightProvider, Weights};

/// A loaded model: its configuration and its weights on backend `B`.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub weights: Weights<B::Weight>,
}
