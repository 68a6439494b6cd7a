#!/usr/bin/env python3
"""Dumps llama.cpp's intermediate f32 tensors for one oracle sequence evaluated in one batch,
f32 KV cache, no flash attention, 1 thread (how tests/fixtures/oracle was made): one .npy per
tensor, in evaluation order (NNN_NAME.npy, shaped as ggml's ne reversed), and index.json with
each tensor's name, ggml op, ne and sources. For finding where our arithmetic departs from
llama.cpp's: feed an op llama.cpp's input and compare its output bit for bit
(docs/oracle-agreement-llama-cpp.md, "How the x86 arithmetic was found").

usage (with the Python that has llama_cpp, e.g. target/llama-cpp-python-avx2/bin/python):
  pkg-scripts/llama-cpp-dump-tensors.py MODEL.gguf ORACLE.json CASE OUT_DIR [--layers 0,1]
Tensors whose name ends in -N are kept for the layers listed; unnumbered ones always.
"""
import argparse
import ctypes
import json
import os
import sys

import llama_cpp as L
import numpy as np


class Tensor(ctypes.Structure):
    """struct ggml_tensor of this llama.cpp version (ggml/include/ggml.h)."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("oracle")
    ap.add_argument("case", type=int)
    ap.add_argument("out")
    ap.add_argument("--layers", default="0,1")
    args = ap.parse_args()
    layers = {int(x) for x in args.layers.split(",")}
    os.makedirs(args.out, exist_ok=True)
    case = json.load(open(args.oracle, encoding="utf-8"))["cases"][args.case]
    seq = case["prompt_ids"] + case["greedy_ids"]
    seen = []

    def wanted(name):
        if "-" not in name:
            return True
        try:
            return int(name.rsplit("-", 1)[1]) in layers
        except ValueError:
            return False

    @L.ggml_backend_sched_eval_callback
    def callback(tp, ask, _user):
        t = ctypes.cast(tp, ctypes.POINTER(Tensor)).contents
        name = t.name.decode()
        if ask:
            return wanted(name)
        if not wanted(name) or t.type != 0:  # f32 only
            return True
        ne, nb = list(t.ne), list(t.nb)
        size = sum((ne[i] - 1) * nb[i] for i in range(4)) + 4
        raw = np.frombuffer(bytes((ctypes.c_char * size).from_address(t.data)), dtype=np.uint8)
        arr = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=ne[::-1], strides=nb[::-1]).copy()
        srcs = []
        for k in range(3):
            if t.src[k]:
                s = ctypes.cast(t.src[k], ctypes.POINTER(Tensor)).contents
                srcs.append([s.name.decode(), s.type, list(s.ne)])
        np.save(os.path.join(args.out, f"{len(seen):03d}_{name}.npy"), arr)
        seen.append({"name": name, "op": t.op, "ne": ne, "src": srcs})
        return True

    L.llama_backend_init()
    model = L.llama_model_load_from_file(args.model.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = len(seq) + 8
    cp.n_threads = cp.n_threads_batch = 1
    cp.type_k = cp.type_v = L.GGML_TYPE_F32
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = callback
    cp.cb_eval_user_data = None
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(len(seq), 0, 1)
    for i, tok in enumerate(seq):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, 1
        batch.seq_id[i][0] = 0
    batch.n_tokens = len(seq)
    rc = L.llama_decode(ctx, batch)
    json.dump({"seq": seq, "tensors": seen}, open(os.path.join(args.out, "index.json"), "w"), indent=1)
    print(f"llama_decode: {rc}; {len(seen)} tensors in {args.out}", file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
