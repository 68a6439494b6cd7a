//! The CPU implementation of [`Backend`]: weights stay in their GGUF block format in host
//! memory and every op runs the `cpu` kernels (SIMD128 in wasm, scalar/autovectorized natively).

use super::backend::Backend;
use super::config::{Activation, ModelConfig, RopeKind, RopeParams};
use crate::cpu::{self, ops, AttnScratch, Kernels, QMatrix, Scratch};
use crate::error::ModelError;
use crate::kv_cache::{KvCache, KvType};
use crate::quant::GgmlType;

/// A weight in host memory: 1-D tensors (norms, biases) as f32, matrices as packed blocks.
pub enum CpuWeight {
    Vector(Vec<f32>),
    /// `rows` rows of `cols` elements of `ty`, row-major packed blocks.
    Matrix {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    },
}

impl CpuWeight {
    fn matrix(&self) -> Result<QMatrix<'_>, ModelError> {
        match self {
            CpuWeight::Matrix { ty, rows, cols, data } => Ok(QMatrix::new(*ty, *rows, *cols, data)?),
            CpuWeight::Vector(v) => Ok(QMatrix::new(GgmlType::F32, 1, v.len(), bytemuck::cast_slice(v))?),
        }
    }

    fn vector(&self) -> Result<&[f32], ModelError> {
        match self {
            CpuWeight::Vector(v) => Ok(v),
            CpuWeight::Matrix { rows, cols, .. } => {
                Err(ModelError::BadHyperparameter { what: "vector weight".into(), value: format!("a {rows}×{cols} matrix") })
            }
        }
    }
}

/// A tensor being received: its bytes accumulate in `data` (`[bytes]`, the packed blocks).
pub struct PendingCpuWeight {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: u64,
    data: Vec<u8>,
}

/// Bytes of a tensor of `shape` (ggml order) and type `ty`, checked to fit this platform's
/// memory (a wasm32 tensor above 4 GiB, or a row not a whole number of blocks, is an error).
pub fn tensor_bytes(name: &str, ty: GgmlType, shape: &[u64]) -> Result<u64, ModelError> {
    let bad = |why: &str| ModelError::TensorShape { name: format!("{name} ({why})"), expected: vec![], found: shape.to_vec() };
    let cols = shape.first().copied().unwrap_or(1);
    let rows = shape.iter().skip(1).try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("element count overflows"))?;
    let row = ty.row_bytes(cols).ok_or_else(|| bad("row is not a whole number of blocks"))?;
    let bytes = row.checked_mul(rows).ok_or_else(|| bad("byte count overflows"))?;
    if usize::try_from(bytes).is_err() || usize::try_from(rows).is_err() || usize::try_from(cols).is_err() {
        return Err(bad("larger than this platform's address space"));
    }
    Ok(bytes)
}

/// Activations `[n_tokens, width]`, row-major.
#[derive(Clone, Debug)]
pub struct CpuAct {
    /// `[n_tokens * width]`
    pub data: Vec<f32>,
    pub n_tokens: usize,
    pub width: usize,
}

pub struct CpuBackend {
    scratch: Scratch,
    attn: AttnScratch,
    /// The kernel family every op of this backend runs.
    kernels: Kernels,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend on the fastest kernels of this build and CPU ([`Kernels::best`]).
    pub fn new() -> Self {
        CpuBackend { scratch: Scratch::default(), attn: AttnScratch::default(), kernels: Kernels::best() }
    }

    /// A backend on kernel family `kernels`, if this build and CPU have it. E.g.
    /// `Kernels::Simd` on x86 runs natively the arithmetic of the browser's SIMD128 kernels,
    /// where the default follows llama.cpp's x86 build; `Kernels::Float` (every build) runs
    /// the weight products without activation rounding.
    pub fn with_kernels(kernels: Kernels) -> Option<Self> {
        (kernels == Kernels::Float || Kernels::available().contains(&kernels)).then(|| CpuBackend { kernels, ..Self::new() })
    }

    /// The kernel family this backend runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }
}

fn shape_err(what: &str, a: usize, b: usize) -> ModelError {
    ModelError::BadHyperparameter { what: what.to_owned(), value: format!("{a} vs {b}") }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Act = CpuAct;
    type Cache = KvCache;

    type Pending = PendingCpuWeight;

    fn begin_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<PendingCpuWeight, ModelError> {
        if !ty.is_supported() {
            return Err(ModelError::UnsupportedTensorType { name: name.to_owned(), ty });
        }
        let bytes = tensor_bytes(name, ty, shape)?;
        let cols = shape.first().copied().unwrap_or(1) as usize;
        let rows = shape.iter().skip(1).product::<u64>() as usize;
        let data = Vec::new();
        Ok(PendingCpuWeight { name: name.to_owned(), ty, rows, cols, bytes, data })
    }

    fn write_weight(&mut self, w: &mut PendingCpuWeight, bytes: &[u8]) -> Result<(), ModelError> {
        let total = w.data.len() as u64 + bytes.len() as u64;
        if total > w.bytes {
            return Err(ModelError::TensorRead { name: w.name.clone(), message: format!("{total} bytes written, the tensor has {}", w.bytes) });
        }
        if w.data.capacity() == 0 {
            // Reserved at the first write, so a tensor announced but never written costs nothing.
            w.data.try_reserve_exact(w.bytes as usize).map_err(|e| ModelError::TensorRead { name: w.name.clone(), message: e.to_string() })?;
        }
        w.data.extend_from_slice(bytes);
        Ok(())
    }

    fn finish_weight(&mut self, w: PendingCpuWeight) -> Result<CpuWeight, ModelError> {
        let PendingCpuWeight { name, ty, rows, cols, bytes, data } = w;
        if data.len() as u64 != bytes {
            return Err(ModelError::TensorRead { name, message: format!("{} of {bytes} bytes arrived", data.len()) });
        }
        if rows == 1 {
            let mut v = vec![0f32; cols];
            crate::quant::dequantize_row(ty, &data, &mut v)?;
            return Ok(CpuWeight::Vector(v));
        }
        // Validate the byte count once here; kernels then trust it.
        QMatrix::new(ty, rows, cols, &data)?;
        Ok(CpuWeight::Matrix { ty, rows, cols, data })
    }

    fn new_cache(&mut self, cfg: &ModelConfig, kv: KvType, n_ctx: usize, recent: usize) -> Result<KvCache, ModelError> {
        Ok(KvCache::new(kv, cfg.n_layers, n_ctx, cfg.n_kv_heads, cfg.head_dim_k, cfg.head_dim_v)?.with_recent(recent)?)
    }

    fn resumable(&self, cache: &KvCache, n: usize) -> usize {
        cache.resume_point(n)
    }

    fn embed(&mut self, table: &CpuWeight, ids: &[u32], scale: Option<f32>) -> Result<CpuAct, ModelError> {
        let m = table.matrix()?;
        let mut data = vec![0f32; ids.len() * m.cols];
        for (row, &id) in data.chunks_exact_mut(m.cols).zip(ids) {
            cpu::get_row(&m, id as usize, row)?;
            if let Some(s) = scale {
                row.iter_mut().for_each(|x| *x *= s);
            }
        }
        Ok(CpuAct { data, n_tokens: ids.len(), width: m.cols })
    }

    fn rms_norm(&mut self, x: &CpuAct, weight: &CpuWeight, eps: f32) -> Result<CpuAct, ModelError> {
        let w = weight.vector()?;
        if w.is_empty() || x.width % w.len() != 0 {
            return Err(shape_err("rms_norm width", x.width, w.len()));
        }
        let mut out = vec![0f32; x.data.len()];
        for (o, xi) in out.chunks_exact_mut(w.len()).zip(x.data.chunks_exact(w.len())) {
            ops::rms_norm(xi, w, eps, o);
        }
        Ok(CpuAct { data: out, n_tokens: x.n_tokens, width: x.width })
    }

    fn matmul(&mut self, w: &CpuWeight, x: &CpuAct) -> Result<CpuAct, ModelError> {
        let m = w.matrix()?;
        if m.cols != x.width {
            return Err(shape_err("matmul inner dimension", m.cols, x.width));
        }
        let mut y = vec![0f32; x.n_tokens * m.rows];
        cpu::matmul_with(self.kernels, &m, &x.data, x.n_tokens, &mut y, &mut self.scratch)?;
        Ok(CpuAct { data: y, n_tokens: x.n_tokens, width: m.rows })
    }

    fn add_bias(&mut self, x: &mut CpuAct, bias: &CpuWeight) -> Result<(), ModelError> {
        let b = bias.vector()?;
        if b.len() != x.width {
            return Err(shape_err("bias width", b.len(), x.width));
        }
        for row in x.data.chunks_exact_mut(x.width) {
            ops::add_inplace(row, b);
        }
        Ok(())
    }

    fn add(&mut self, x: &mut CpuAct, y: &CpuAct) -> Result<(), ModelError> {
        if x.data.len() != y.data.len() {
            return Err(shape_err("add", x.data.len(), y.data.len()));
        }
        ops::add_inplace(&mut x.data, &y.data);
        Ok(())
    }

    fn rope(&mut self, x: &mut CpuAct, head_dim: usize, pos0: usize, rope: &RopeParams, factors: Option<&CpuWeight>) -> Result<(), ModelError> {
        if head_dim == 0 || x.width % head_dim != 0 {
            return Err(shape_err("rope head_dim", x.width, head_dim));
        }
        let params = ops::Rope {
            n_dims: rope.n_dims,
            freq_base: rope.freq_base,
            freq_scale: rope.freq_scale,
            mode: match rope.kind {
                RopeKind::Normal => ops::RopeMode::Normal,
                RopeKind::Neox => ops::RopeMode::Neox,
            },
            freq_factors: factors.map(|f| f.vector().map(<[f32]>::to_vec)).transpose()?,
        };
        let n_heads = x.width / head_dim;
        for (t, row) in x.data.chunks_exact_mut(x.width).enumerate() {
            ops::rope_inplace(self.kernels, row, n_heads, head_dim, pos0 + t, &params);
        }
        Ok(())
    }

    fn glu(&mut self, gate: &CpuAct, up: &CpuAct, act: Activation) -> Result<CpuAct, ModelError> {
        if gate.data.len() != up.data.len() {
            return Err(shape_err("glu", gate.data.len(), up.data.len()));
        }
        let mut out = vec![0f32; gate.data.len()];
        match act {
            Activation::Silu => ops::swiglu(self.kernels, &gate.data, &up.data, &mut out),
            Activation::GeluTanh => ops::geglu(self.kernels, &gate.data, &up.data, &mut out),
        }
        Ok(CpuAct { data: out, n_tokens: gate.n_tokens, width: gate.width })
    }

    fn attention(
        &mut self,
        cache: &mut KvCache,
        cfg: &ModelConfig,
        layer: usize,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        pos0: usize,
    ) -> Result<CpuAct, ModelError> {
        let n = q.n_tokens;
        if pos0 + n > cache.n_ctx() {
            return Err(ModelError::ContextFull { pos: pos0 + n, n_ctx: cache.n_ctx() });
        }
        cache.write_batch(layer, pos0, &k.data, &v.data)?;
        let width = cfg.n_heads * cfg.head_dim_v;
        let mut out = vec![0f32; n * width];
        if n > 1 {
            self.attn.widen_batch_rows(self.kernels, cache, layer, cfg.n_heads, cfg.attn_start(layer, pos0), pos0 + n);
        }
        for t in 0..n {
            let pos = pos0 + t;
            let qr = &q.data[t * q.width..(t + 1) * q.width];
            let o = &mut out[t * width..(t + 1) * width];
            cpu::attention::attention(
                self.kernels,
                cache,
                layer,
                qr,
                cfg.n_heads,
                cfg.attn_start(layer, pos),
                pos + 1,
                cfg.attn_scale,
                None,
                n,
                o,
                &mut self.attn,
            );
        }
        self.attn.forget_batch_rows();
        Ok(CpuAct { data: out, n_tokens: n, width })
    }

    fn last_rows(&mut self, x: &CpuAct, n: usize) -> Result<CpuAct, ModelError> {
        let n = n.min(x.n_tokens);
        Ok(CpuAct { data: x.data[(x.n_tokens - n) * x.width..].to_vec(), n_tokens: n, width: x.width })
    }

    fn softcap(&mut self, x: &mut CpuAct, cap: f32) -> Result<(), ModelError> {
        x.data.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        Ok(())
    }

    fn read_host(&mut self, x: CpuAct) -> Result<Vec<f32>, ModelError> {
        Ok(x.data)
    }

    fn describe(&self) -> String {
        format!("cpu ({} kernels)", self.kernels.name())
    }
}
