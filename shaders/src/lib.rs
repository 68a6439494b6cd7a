//! WGSL kernels of webgguf. One `.wgsl` file per kernel family lives in `shaders/`; a family's
//! module is its file with the helper files it uses prepended (WGSL has no includes):
//! `dequant.wgsl` (weight block layout → values), `f16.wgsl` (exact f16 and quantizer rounding,
//! the GLU activations)
//! and one of the two workgroup-sum variants,
//! `reduce_shared.wgsl` (every adapter) or `reduce_subgroup.wgsl` (adapters with subgroups).
//! Sizes that vary per call are uniforms; per-pipeline choices (weight type, KV type) are WGSL
//! `override` constants.

/// A kernel family: one WGSL module with one or more entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `matvec`, `matvec3` (up to three weights of one buffer: q/k/v), `matvec_glu` (gate and
    /// up with the GLU applied), `matmul_tiled`, `min_fix` (override `WTYPE`).
    Matmul,
    /// `embed` (override `WTYPE`).
    Embed,
    /// `rms_norm`.
    Norm,
    /// `add`, `add_bias`, `softcap`, `glu`, `rope`, `copy4`.
    Elementwise,
    /// `act_round`.
    ActQuant,
    /// `argmax`.
    Argmax,
    /// `kv_offset`, `kv_store` (and the queries' preparation), `kv_keep`, `attn_split`,
    /// `attn_merge` (override `KVTYPE`).
    Attention,
}

impl Family {
    pub const ALL: [Family; 7] = [Family::Matmul, Family::Embed, Family::Norm, Family::Elementwise, Family::ActQuant, Family::Argmax, Family::Attention];

    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::Embed => "embed",
            Family::Norm => "norm",
            Family::Elementwise => "elementwise",
            Family::ActQuant => "act_quant",
            Family::Argmax => "argmax",
            Family::Attention => "attention",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Family::Matmul => MATMUL,
            Family::Embed => EMBED,
            Family::Norm => NORM,
            Family::Elementwise => ELEMENTWISE,
            Family::ActQuant => ACT_QUANT,
            Family::Argmax => ARGMAX,
            Family::Attention => ATTENTION,
        }
    }

    fn uses_dequant(self) -> bool {
        matches!(self, Family::Matmul | Family::Embed)
    }

    fn uses_f16_rounding(self) -> bool {
        matches!(self, Family::Matmul | Family::Elementwise | Family::ActQuant | Family::Attention)
    }

    fn uses_reduce(self) -> bool {
        matches!(self, Family::Matmul | Family::Norm | Family::Attention)
    }
}

/// Which workgroup-sum variant a module is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// Shared memory only: runs everywhere.
    Shared,
    /// Subgroup operations. `directive` prepends `enable subgroups;`, which browsers require and
    /// native naga (wgpu's native front end) rejects.
    Subgroup { directive: bool },
}

pub const DEQUANT: &str = include_str!("../shaders/dequant.wgsl");
pub const F16: &str = include_str!("../shaders/f16.wgsl");
pub const REDUCE_SHARED: &str = include_str!("../shaders/reduce_shared.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../shaders/reduce_subgroup.wgsl");
pub const MATMUL: &str = include_str!("../shaders/matmul.wgsl");
pub const EMBED: &str = include_str!("../shaders/embed.wgsl");
pub const NORM: &str = include_str!("../shaders/norm.wgsl");
pub const ELEMENTWISE: &str = include_str!("../shaders/elementwise.wgsl");
pub const ACT_QUANT: &str = include_str!("../shaders/act_quant.wgsl");
pub const ARGMAX: &str = include_str!("../shaders/argmax.wgsl");
pub const ATTENTION: &str = include_str!("../shaders/attention.wgsl");

/// How activations are rounded before a product with a weight (act_quant.wgsl's modes): to the
/// weight type's `vec_dot_type`, as ggml's CPU dot products see them. The values reach WGSL as
/// the constants `ACT_F16` … `ACT_Q8_1` of a prologue (one source for both languages).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActRound {
    /// Not rounded (F32 weights, and the fast kernel family).
    None = 0,
    /// Per value to f16 (F16 weights).
    F16 = 1,
    /// Per value to bf16 (BF16 weights).
    Bf16 = 2,
    /// Blocks of 32 as Q8_0 (Q4_0, Q5_0, Q8_0 weights).
    Q8_0 = 3,
    /// Blocks of 256 as Q8_K (K-quant weights).
    Q8K = 4,
    /// As Q8_0, plus the Q8_1 block-sum corrections (Q4_1, Q5_1 weights).
    Q8_1 = 5,
}

impl ActRound {
    pub const ALL: [ActRound; 6] = [ActRound::None, ActRound::F16, ActRound::Bf16, ActRound::Q8_0, ActRound::Q8K, ActRound::Q8_1];

    /// Its WGSL constant's name.
    pub fn wgsl_name(self) -> &'static str {
        match self {
            ActRound::None => "ACT_NONE",
            ActRound::F16 => "ACT_F16",
            ActRound::Bf16 => "ACT_BF16",
            ActRound::Q8_0 => "ACT_Q8_0",
            ActRound::Q8K => "ACT_Q8_K",
            ActRound::Q8_1 => "ACT_Q8_1",
        }
    }

    /// Values per rounding block (the values of one act_round workgroup).
    pub fn block(self) -> usize {
        match self {
            ActRound::Q8_0 | ActRound::Q8_1 => 32,
            ActRound::Q8K => 256,
            ActRound::None | ActRound::F16 | ActRound::Bf16 => 64,
        }
    }
}

/// Positions per `attn_split` workgroup (attention.wgsl's SPLIT, prepended to its module): the
/// runtime sizes the splits' partials by it.
pub const ATTN_SPLIT: u32 = 256;

/// The complete WGSL module of `family` built with `reduce`.
pub fn source(family: Family, reduce: Reduce) -> String {
    let mut s = String::new();
    if family.uses_reduce() {
        if let Reduce::Subgroup { directive: true } = reduce {
            s.push_str("enable subgroups;\n");
        }
    }
    if family.uses_dequant() {
        s.push_str(DEQUANT);
    }
    if family.uses_f16_rounding() {
        s.push_str(F16);
    }
    if family.uses_reduce() {
        s.push_str(match reduce {
            Reduce::Shared => REDUCE_SHARED,
            Reduce::Subgroup { .. } => REDUCE_SUBGROUP,
        });
    }
    if family == Family::Attention {
        s.push_str(&format!("const SPLIT: u32 = {ATTN_SPLIT}u;\n"));
    }
    if family == Family::ActQuant {
        for m in ActRound::ALL {
            s.push_str(&format!("const {}: u32 = {}u;\n", m.wgsl_name(), m as u32));
        }
    }
    s.push_str(family.file());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(src: &str, what: &str) {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Err(e) = v.validate(&module) {
            panic!("{what}: {}", e.emit_to_string(src));
        }
    }

    /// Every family in every variant native wgpu can build parses and validates.
    #[test]
    fn every_variant_validates() {
        for f in Family::ALL {
            for r in [Reduce::Shared, Reduce::Subgroup { directive: false }] {
                validate(&source(f, r), &format!("{} {:?}", f.name(), r));
            }
        }
    }

    /// The browser variant differs only by the directive line.
    #[test]
    fn browser_subgroup_variant_adds_only_the_directive() {
        let native = source(Family::Matmul, Reduce::Subgroup { directive: false });
        let web = source(Family::Matmul, Reduce::Subgroup { directive: true });
        assert_eq!(web.strip_prefix("enable subgroups;\n"), Some(native.as_str()));
        assert!(!source(Family::Argmax, Reduce::Subgroup { directive: true }).contains("enable"));
    }
}
