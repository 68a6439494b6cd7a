//! Models: configuration from metadata, weights by name, and the one forward pass written
//! against the [`Backend`] trait.

mod backend;
mod config;
mod cpu_backend;
mod forward;
mod weights;

pub use backend::Backend;
pub use config::{Activation, Arch, ModelConfig, RopeKind, RopeParams};
pub use cpu_backend::{CpuAct, CpuBackend, CpuWeight};
pub use forward::Logits;
pub use weights::{BytesSource, LayerWeights, TensorSource, Weights};
#[cfg(not(target_arch = "wasm32"))]
pub use weights::FileSource;

use crate::error::ModelError;
use crate::gguf::GgufModel;

/// A loaded model: its configuration and its weights on backend `B`.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub weights: Weights<B::Weight>,
}

impl<B: Backend> Model<B> {
    /// Reads the configuration from the model's metadata and loads every tensor it needs.
    pub fn load<S: TensorSource>(backend: &mut B, gguf: &GgufModel, source: &mut S) -> Result<Model<B>, ModelError> {
        let config = ModelConfig::from_metadata(gguf.metadata())?;
        let weights = Weights::load(backend, &config, gguf, source)?;
        Ok(Model { config, weights })
    }
}
