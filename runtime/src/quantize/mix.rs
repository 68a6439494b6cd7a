//! Which type each tensor gets: a port of llama.cpp's `llama_tensor_get_type` (llama-quant.cpp)
//! for the file types of [`FileType`] — which tensors are quantized at all, the `_S`/`_M` rules
//! that give attn_v, ffn_down, attn_output and the output matrix more bits, and the fallback to
//! a 32-block type when a row length is not a multiple of 256. Written out rule by rule rather
//! than table-driven so each branch can be read against the reference; the IQ and MoE-only
//! file types are not offered. Not ported: the 70B-specific attn_v bump (llama.cpp keys it on
//! its own model-size guess) and importance matrices.

use super::FileType;
use crate::quant::GgmlType;

/// What the rules need to know about the model (from its metadata).
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// `head_count / head_count_kv` (1 without grouped-query attention).
    pub n_gqa: usize,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: usize,
}

/// Overrides on top of the file type's rules (llama-quantize's options of the same names).
#[derive(Clone, Debug, Default)]
pub struct MixOptions {
    /// `token_embd.weight`'s type (e.g. F16 to keep it exact).
    pub token_embedding_type: Option<GgmlType>,
    /// `output.weight`'s type (and the tied token embedding's).
    pub output_tensor_type: Option<GgmlType>,
    /// Every quantizable tensor gets the base type: no `_S`/`_M` rules (the row-length
    /// fallback still applies).
    pub pure: bool,
}

/// One tensor as the rules see it.
#[derive(Clone, Debug)]
pub struct TensorIn<'a> {
    pub name: &'a str,
    /// ggml order (row length first).
    pub shape: &'a [u64],
    pub ty: GgmlType,
}

/// The type chosen for a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    /// Set when the rules wanted this type but the row length is not a multiple of its block.
    pub fell_back_from: Option<GgmlType>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MixError {
    #[error("tensor {0}: cannot tell its layer from the name (expected blk.N.…) in a mixture-of-experts model")]
    NoLayer(String),
    #[error("tensor {name}: layer {layer} is outside the model's {n_layer} layers")]
    BadLayer { name: String, layer: usize, n_layer: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    /// `tensor_get_category`: the first substring that matches, in this order.
    fn of(name: &str) -> Category {
        use Category::*;
        if name == "output.weight" {
            return Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return TokenEmbd;
        }
        const BY_PART: [(&str, Category); 9] = [
            ("attn_qkv.weight", AttnQkv),
            ("attn_kv_b.weight", AttnKvB),
            ("attn_v.weight", AttnV),
            ("attn_k.weight", AttnK),
            ("attn_q.weight", AttnQ),
            ("attn_output.weight", AttnOutput),
            ("ffn_up", FfnUp),
            ("ffn_gate", FfnGate),
            ("ffn_down", FfnDown),
        ];
        BY_PART.iter().find(|(p, _)| name.contains(p)).map_or(Other, |&(_, c)| c)
    }

    /// `category_is_attn_v`: tensors that carry values (most sensitive to quantization).
    fn is_attn_v(self) -> bool {
        matches!(self, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
    }
}

/// `ggml_n_dims`: dimensions up to the last one that is not 1 (at least 1).
pub fn n_dims(shape: &[u64]) -> usize {
    shape.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// `tensor_allows_quantization` (the parts that concern architectures we read or might be
/// given): 2-D and larger weights, not norms, gates of experts, positional tables or the small
/// convolution/mixing tensors llama.cpp keeps as they are.
pub fn allows_quantization(name: &str, shape: &[u64]) -> bool {
    if n_dims(shape) < 2 || !name.ends_with("weight") {
        return false;
    }
    const KEEP_PARTS: [&str; 16] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_",
        "attn_rel_b.weight",
        ".position_embd",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
    ];
    const KEEP_NAMES: [&str; 2] = ["position_embd.weight", "token_types.weight"];
    !KEEP_PARTS.iter().any(|p| name.contains(p)) && !KEEP_NAMES.contains(&name)
}

/// The order llama.cpp quantizes (and writes) tensors in: tensors outside the blocks first,
/// then block by block, by name within each (`weight_name_comparer`). The counters of the
/// `_M` rules depend on it.
pub fn llama_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| -> i64 { n.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|d| d.parse::<i64>().ok()).unwrap_or(-1) };
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| (layer(names[a]), names[a]).cmp(&(layer(names[b]), names[b])));
    idx
}

/// `use_more_bits`: the first and last eighth of the layers and every third one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Chooses every tensor's type. `tensors` must be in [`llama_order`].
pub fn choose_types(tensors: &[TensorIn<'_>], facts: &ModelFacts, ftype: FileType, opts: &MixOptions) -> Result<Vec<Choice>, MixError> {
    let categories: Vec<Category> = tensors.iter().map(|t| Category::of(t.name)).collect();
    let mut state = Counters {
        n_attention_wv: categories.iter().filter(|c| c.is_attn_v()).count(),
        has_tied_embeddings: !categories.contains(&Category::Output),
        ..Counters::default()
    };
    tensors
        .iter()
        .zip(categories)
        .map(|(t, cat)| {
            if !allows_quantization(t.name, t.shape) {
                return Ok(Choice { ty: t.ty, fell_back_from: None });
            }
            if let (Some(ty), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
                return Ok(Choice { ty, fell_back_from: None });
            }
            if let (Some(ty), Category::Output) = (opts.output_tensor_type, cat) {
                return Ok(Choice { ty, fell_back_from: None });
            }
            let base = ftype.base_type();
            // F32/F16/BF16 files: every quantizable tensor gets the base type, no rules.
            if base.block_size() == 1 {
                return Ok(Choice { ty: base, fell_back_from: None });
            }
            let wanted = if opts.pure { base } else { state.rules(t, cat, facts, ftype, opts)? };
            Ok(fallback(wanted, t.shape.first().copied().unwrap_or(0)))
        })
        .collect()
}

#[derive(Default)]
struct Counters {
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
    has_tied_embeddings: bool,
}

impl Counters {
    /// `layer_info`: the counter is the layer in dense models; MoE models name it.
    fn layer(counter: usize, name: &str, facts: &ModelFacts) -> Result<(usize, usize), MixError> {
        let n = facts.n_layer;
        if facts.n_expert <= 1 {
            return Ok((counter, n));
        }
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| MixError::NoLayer(name.to_owned()))?;
        if layer >= n {
            return Err(MixError::BadLayer { name: name.to_owned(), layer, n_layer: n });
        }
        Ok((layer, n))
    }

    /// `llama_tensor_get_type_impl` for a quantized base type.
    fn rules(&mut self, t: &TensorIn<'_>, cat: Category, facts: &ModelFacts, ftype: FileType, opts: &MixOptions) -> Result<GgmlType, MixError> {
        use FileType as F;
        use GgmlType as G;
        let mut ty = ftype.base_type();
        let falcon = facts.arch == "falcon";
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            // The output matrix (or the embedding that doubles as it) gets at least Q6_K.
            if let Some(o) = opts.output_tensor_type {
                ty = o;
            } else {
                let nx = t.shape.first().copied().unwrap_or(0);
                if falcon || nx % ty.block_size() as u64 != 0 {
                    ty = G::Q8_0;
                } else if ty != G::Q8_0 {
                    ty = G::Q6_K;
                }
            }
        } else if cat == Category::TokenEmbd {
            // No rule for the file types offered here.
        } else if cat.is_attn_v() {
            match ftype {
                F::Q2_K => ty = if facts.n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q3_K_M => ty = if self.i_attention_wv < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => ty = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(self.i_attention_wv, self.n_attention_wv) => ty = G::Q6_K,
                F::Q4_K_S if self.i_attention_wv < 4 => ty = G::Q5_K,
                _ => {}
            }
            if facts.n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if facts.n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if cat == Category::FfnDown {
            let (i, n) = Self::layer(self.i_ffn_down, t.name, facts)?;
            match ftype {
                F::Q2_K => ty = G::Q3_K,
                F::Q3_K_M => {
                    ty = if i < n / 16 {
                        G::Q5_K
                    } else if !falcon || use_more_bits(i, n) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => ty = if falcon { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M => {
                    if falcon {
                        ty = if i < n / 16 {
                            G::Q6_K
                        } else if use_more_bits(i, n) {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if use_more_bits(i, n) {
                        ty = G::Q6_K;
                    }
                }
                F::Q5_K_M if use_more_bits(i, n) => ty = G::Q6_K,
                F::Q4_K_S if !falcon && i < n / 8 => ty = G::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if facts.n_expert == 8 {
                    if matches!(ftype, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M) {
                        ty = G::Q5_K;
                    }
                } else {
                    match ftype {
                        F::Q2_K => ty = G::Q3_K,
                        F::Q3_K_M => ty = G::Q4_K,
                        F::Q3_K_L => ty = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == F::Q3_K_L {
                ty = G::Q4_K;
            }
        } else if cat == Category::FfnGate {
            Self::layer(self.i_ffn_gate, t.name, facts)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            Self::layer(self.i_ffn_up, t.name, facts)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }
}

/// `tensor_type_fallback`: a row length that is not a multiple of the block takes the nearest
/// 32-block type (F16 if not even that fits).
pub fn fallback(ty: GgmlType, ncols: u64) -> Choice {
    use GgmlType as G;
    if ncols % ty.block_size() as u64 == 0 {
        return Choice { ty, fell_back_from: None };
    }
    let mut to = match ty {
        G::Q2_K | G::Q3_K => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        other => other,
    };
    if ncols % to.block_size() as u64 != 0 {
        to = G::F16;
    }
    Choice { ty: to, fell_back_from: Some(ty) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as G;

    /// A dense llama-like model's tensor list (ggml shapes), in file order.
    fn llama(n_layer: usize, d: u64, ff: u64, kv: u64, tied: bool) -> Vec<(String, Vec<u64>)> {
        let mut v = vec![("token_embd.weight".to_owned(), vec![d, 1000])];
        for i in 0..n_layer {
            for (n, s) in [
                ("attn_norm.weight", vec![d]),
                ("attn_q.weight", vec![d, d]),
                ("attn_k.weight", vec![d, kv]),
                ("attn_v.weight", vec![d, kv]),
                ("attn_output.weight", vec![d, d]),
                ("ffn_norm.weight", vec![d]),
                ("ffn_gate.weight", vec![d, ff]),
                ("ffn_up.weight", vec![d, ff]),
                ("ffn_down.weight", vec![ff, d]),
            ] {
                v.push((format!("blk.{i}.{n}"), s));
            }
        }
        v.push(("output_norm.weight".to_owned(), vec![d]));
        if !tied {
            v.push(("output.weight".to_owned(), vec![d, 1000]));
        }
        v
    }

    fn choose(model: &[(String, Vec<u64>)], facts: &ModelFacts, ftype: FileType, opts: &MixOptions) -> Vec<(String, Choice)> {
        let names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
        let order = llama_order(&names);
        let ins: Vec<TensorIn<'_>> = order.iter().map(|&i| TensorIn { name: &model[i].0, shape: &model[i].1, ty: G::F16 }).collect();
        let out = choose_types(&ins, facts, ftype, opts).unwrap();
        ins.iter().zip(out).map(|(t, c)| (t.name.to_owned(), c)).collect()
    }

    fn ty_of(r: &[(String, Choice)], name: &str) -> G {
        r.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1.ty
    }

    fn facts(n_layer: usize, n_gqa: usize) -> ModelFacts {
        ModelFacts { arch: "llama".into(), n_layer, n_gqa, n_expert: 0 }
    }

    #[test]
    fn order_puts_globals_first_then_layers_numerically() {
        let names = ["blk.10.a", "output.weight", "blk.2.b", "blk.2.a", "token_embd.weight", "blk.1.z"];
        let o: Vec<&str> = llama_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(o, ["output.weight", "token_embd.weight", "blk.1.z", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }

    #[test]
    fn use_more_bits_matches_llama_cpp_for_32_layers() {
        // n = 32: first 4, last 4 (28..), and 4 + 3k + 2 between.
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    #[test]
    fn q4_k_m_gives_half_of_attn_v_and_ffn_down_q6_k() {
        let m = llama(32, 256, 512, 256, false);
        let r = choose(&m, &facts(32, 1), FileType::Q4_K_M, &MixOptions::default());
        for i in 0..32 {
            let want = if use_more_bits(i, 32) { G::Q6_K } else { G::Q4_K };
            assert_eq!(ty_of(&r, &format!("blk.{i}.attn_v.weight")), want, "attn_v {i}");
            assert_eq!(ty_of(&r, &format!("blk.{i}.ffn_down.weight")), want, "ffn_down {i}");
            assert_eq!(ty_of(&r, &format!("blk.{i}.attn_q.weight")), G::Q4_K);
            assert_eq!(ty_of(&r, &format!("blk.{i}.ffn_up.weight")), G::Q4_K);
            assert_eq!(ty_of(&r, &format!("blk.{i}.attn_norm.weight")), G::F16, "norms are never quantized");
        }
        assert_eq!(ty_of(&r, "output.weight"), G::Q6_K);
        assert_eq!(ty_of(&r, "token_embd.weight"), G::Q4_K);
    }

    #[test]
    fn small_and_large_variants() {
        let m = llama(16, 256, 512, 256, true);
        let f = facts(16, 1);
        let s = choose(&m, &f, FileType::Q4_K_S, &MixOptions::default());
        // Q4_K_S: the first 4 attn_v and the first eighth of ffn_down get Q5_K.
        for i in 0..16 {
            assert_eq!(ty_of(&s, &format!("blk.{i}.attn_v.weight")), if i < 4 { G::Q5_K } else { G::Q4_K });
            assert_eq!(ty_of(&s, &format!("blk.{i}.ffn_down.weight")), if i < 2 { G::Q5_K } else { G::Q4_K });
        }
        // Tied embeddings are the output: Q6_K.
        assert_eq!(ty_of(&s, "token_embd.weight"), G::Q6_K);
        let q3m = choose(&m, &f, FileType::Q3_K_M, &MixOptions::default());
        assert_eq!(ty_of(&q3m, "blk.0.attn_v.weight"), G::Q5_K);
        assert_eq!(ty_of(&q3m, "blk.2.attn_v.weight"), G::Q4_K);
        assert_eq!(ty_of(&q3m, "blk.0.ffn_down.weight"), G::Q5_K);
        assert_eq!(ty_of(&q3m, "blk.5.ffn_down.weight"), G::Q4_K);
        assert_eq!(ty_of(&q3m, "blk.5.attn_output.weight"), G::Q4_K);
        assert_eq!(ty_of(&q3m, "blk.5.attn_q.weight"), G::Q3_K);
        let q3s = choose(&m, &f, FileType::Q3_K_S, &MixOptions::default());
        assert_eq!(ty_of(&q3s, "blk.0.attn_v.weight"), G::Q3_K);
        assert_eq!(ty_of(&q3s, "blk.0.ffn_down.weight"), G::Q3_K);
        let q2 = choose(&m, &f, FileType::Q2_K, &MixOptions::default());
        assert_eq!(ty_of(&q2, "blk.3.attn_v.weight"), G::Q3_K);
        assert_eq!(ty_of(&q2, "blk.3.ffn_down.weight"), G::Q3_K);
        assert_eq!(ty_of(&q2, "blk.3.attn_output.weight"), G::Q3_K);
        assert_eq!(ty_of(&q2, "blk.3.ffn_gate.weight"), G::Q2_K);
        // With grouped-query attention (4 heads per KV head) Q2_K's attn_v gets Q4_K.
        let q2g = choose(&m, &facts(16, 4), FileType::Q2_K, &MixOptions::default());
        assert_eq!(ty_of(&q2g, "blk.3.attn_v.weight"), G::Q4_K);
        // Legacy types: output Q6_K, everything else the base type.
        let q40 = choose(&m, &f, FileType::Q4_0, &MixOptions::default());
        assert_eq!(ty_of(&q40, "blk.0.attn_v.weight"), G::Q4_0);
        assert_eq!(ty_of(&q40, "token_embd.weight"), G::Q6_K);
        let q8 = choose(&m, &f, FileType::Q8_0, &MixOptions::default());
        assert_eq!(ty_of(&q8, "token_embd.weight"), G::Q8_0);
        let f16 = choose(&m, &f, FileType::F16, &MixOptions::default());
        assert!(f16.iter().all(|(_, c)| c.ty == G::F16));
    }

    #[test]
    fn row_lengths_off_256_fall_back_as_llama_cpp_does() {
        // SmolLM2-like: d = 576 (not a multiple of 256), ff = 1536.
        let m = llama(30, 576, 1536, 192, true);
        let r = choose(&m, &facts(30, 3), FileType::Q4_K_M, &MixOptions::default());
        let q = r.iter().find(|(n, _)| n == "blk.0.attn_q.weight").unwrap().1;
        assert_eq!(q, Choice { ty: G::Q5_0, fell_back_from: Some(G::Q4_K) });
        // ffn_down rows are 1536 long: no fallback; layer 0 uses more bits.
        assert_eq!(ty_of(&r, "blk.0.ffn_down.weight"), G::Q6_K);
        assert_eq!(ty_of(&r, "blk.4.ffn_down.weight"), G::Q4_K);
        // attn_v (576 columns) wanted Q6_K: Q8_0.
        assert_eq!(ty_of(&r, "blk.0.attn_v.weight"), G::Q8_0);
        // The tied embedding: 576 % 256 != 0 → Q8_0 directly (the output rule).
        assert_eq!(ty_of(&r, "token_embd.weight"), G::Q8_0);
        assert_eq!(fallback(G::Q2_K, 576).ty, G::Q4_0);
        assert_eq!(fallback(G::Q5_K, 576).ty, G::Q5_1);
        assert_eq!(fallback(G::Q4_0, 48).ty, G::F16);
        assert_eq!(fallback(G::Q4_K, 512), Choice { ty: G::Q4_K, fell_back_from: None });
    }

    #[test]
    fn overrides_and_pure() {
        let m = llama(8, 256, 512, 256, false);
        let opts = MixOptions { token_embedding_type: Some(G::F16), output_tensor_type: Some(G::Q8_0), pure: false };
        let r = choose(&m, &facts(8, 1), FileType::Q4_K_M, &opts);
        assert_eq!(ty_of(&r, "token_embd.weight"), G::F16);
        assert_eq!(ty_of(&r, "output.weight"), G::Q8_0);
        let p = choose(&m, &facts(8, 1), FileType::Q4_K_M, &MixOptions { pure: true, ..MixOptions::default() });
        assert!(p.iter().filter(|(n, _)| !n.contains("norm")).all(|(_, c)| c.ty == G::Q4_K));
    }

    #[test]
    fn moe_layers_come_from_names() {
        let f = ModelFacts { arch: "llama".into(), n_layer: 2, n_gqa: 1, n_expert: 8 };
        let shape = [256u64, 256, 8];
        let bad = [TensorIn { name: "experts.ffn_down.weight", shape: &shape, ty: G::F16 }];
        assert_eq!(choose_types(&bad, &f, FileType::Q4_K_M, &MixOptions::default()), Err(MixError::NoLayer("experts.ffn_down.weight".into())));
        let out = [TensorIn { name: "blk.5.ffn_down_exps.weight", shape: &shape, ty: G::F16 }];
        assert!(matches!(choose_types(&out, &f, FileType::Q4_K_M, &MixOptions::default()), Err(MixError::BadLayer { layer: 5, .. })));
        let v = [TensorIn { name: "blk.0.attn_v.weight", shape: &shape[..2], ty: G::F16 }];
        assert_eq!(choose_types(&v, &f, FileType::Q4_K_M, &MixOptions::default()).unwrap()[0].ty, G::Q8_0);
    }
}
