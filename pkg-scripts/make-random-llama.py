#!/usr/bin/env python3
"""Writes a random-weight llama GGUF (F16) whose dims are multiples of 256, with SmolLM2's
tokenizer (so it reads the same text): the second source model of the quantization ladder
(pkg-scripts/eval-ladder). Its perplexity means nothing; KL divergence and top-1 agreement
against it measure the quantizers on rows where no K-quant falls back.
  make-random-llama.py SMOLLM2.gguf OUT.gguf
Needs the Python gguf package (and numpy)."""
import sys
import numpy as np
import gguf

src, out = sys.argv[1:3]
r = gguf.GGUFReader(src)
rng = np.random.default_rng(7)
n_embd, n_ff, n_layer, n_head, n_head_kv = 512, 1536, 4, 8, 4
w = gguf.GGUFWriter(out, "llama")
w.add_name("random llama 512x4 (webgguf eval)")
w.add_context_length(2048)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head_kv)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(10000.0)
w.add_file_type(1)
# SmolLM2's tokenizer, field by field.
for name, field in r.fields.items():
    if not name.startswith("tokenizer."):
        continue
    vt = field.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        et = field.types[1]
        vals = [field.parts[i] for i in field.data]
        if et == gguf.GGUFValueType.STRING:
            w.add_array(name, [bytes(v).decode("utf-8") for v in vals])
        else:
            w.add_array(name, [v[0].item() for v in vals])
    elif vt == gguf.GGUFValueType.STRING:
        w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
    else:
        w.add_key_value(name, field.parts[field.data[0]][0].item(), vt)
n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
def t(name, *shape, scale=None):
    # numpy shape is ggml's reversed; weights ~ N(0, 1/sqrt(fan_in)), norms 1.
    if scale == "norm":
        a = np.ones(shape, dtype=np.float32)
        w.add_tensor(name, a)
        return
    a = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[-1])
    w.add_tensor(name, a.astype(np.float16))
t("token_embd.weight", n_vocab, n_embd)
hd = n_embd // n_head
for i in range(n_layer):
    t(f"blk.{i}.attn_norm.weight", n_embd, scale="norm")
    t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
    t(f"blk.{i}.attn_k.weight", n_head_kv * hd, n_embd)
    t(f"blk.{i}.attn_v.weight", n_head_kv * hd, n_embd)
    t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
    t(f"blk.{i}.ffn_norm.weight", n_embd, scale="norm")
    t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
    t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
    t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
t("output_norm.weight", n_embd, scale="norm")
t("output.weight", n_vocab, n_embd)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
