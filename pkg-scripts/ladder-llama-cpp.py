#!/usr/bin/env python3
"""Checks the quantization ladder (docs/quant-ladder.*) against llama.cpp itself:

  ladder-llama-cpp.py perplexity FILE.gguf... [--tokens 1024] [--window 256]
      llama.cpp's perplexity on the same files `webgguf eval` measured: the same text (the start
      of GPL-3), the same tokens (the first TOKENS, tokenized by llama.cpp without BOS or special
      parsing), the same windows (WINDOW positions from an empty cache, BOS first when the file
      adds one, every position with a predecessor in its window predicted). One JSON object per
      file: {"file", "ppl", "predictions"}.
  ladder-llama-cpp.py same-bytes SOURCE.gguf OURS.gguf TYPE
      quantizes SOURCE with llama.cpp's llama_model_quantize (TYPE as in `webgguf quantize
      --type`, no imatrix) into a temporary file and compares every tensor's type and bytes
      with OURS (gguf-py reads both). JSON: {"type", "tensors", "identical", "differ": [names]}.

Run with a Python that has llama-cpp-python and gguf (pkg-scripts/bench-browser sets up the
former in target/llama-cpp-python; pip install gguf==0.19.0 there too).
"""
import argparse
import json
import math
import os
import tempfile

import llama_cpp
import numpy as np
from llama_cpp_eval import teacher_forced_logits


def perplexity(path, text, n_tokens, window):
    llm = llama_cpp.Llama(model_path=path, n_ctx=window, n_batch=window, logits_all=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[:n_tokens]
    bos = [llm.token_bos()] if llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)) else []
    per = window - len(bos)
    nll, count = 0.0, 0
    for start in range(0, len(tokens), per):
        seq = bos + tokens[start:start + per]
        if len(seq) < 2:
            continue
        logits = teacher_forced_logits(llm, seq).astype(np.float64)
        for i in range(len(seq) - 1):
            row = logits[i]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll += lse - row[seq[i + 1]]
            count += 1
    return math.exp(nll / count), count


def same_bytes(source, ours, type_name):
    from gguf import GGUFReader

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type_name.upper()}", None)
    if ftype is None and type_name.upper() in ("F32", "ALL_F32"):
        ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    if ftype is None:
        raise SystemExit(f"unknown type {type_name}")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = os.path.join(tmp, "llama-quantize.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        if llama_cpp.llama_model_quantize(source.encode(), theirs.encode(), params) != 0:
            raise SystemExit("llama_model_quantize failed")
        a = {t.name: t for t in GGUFReader(ours).tensors}
        b = {t.name: t for t in GGUFReader(theirs).tensors}
        same = lambda n: (n in b and a[n].tensor_type == b[n].tensor_type
                          and np.array_equal(np.asarray(a[n].data).view(np.uint8), np.asarray(b[n].data).view(np.uint8)))
        differ = sorted(n for n in set(a) | set(b) if n not in a or not same(n))
        return {"type": type_name, "tensors": len(b), "identical": len(a) - len([n for n in differ if n in a]), "differ": differ}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perplexity")
    p.add_argument("files", nargs="+")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--window", type=int, default=256)
    q = sub.add_parser("same-bytes")
    q.add_argument("source")
    q.add_argument("ours")
    q.add_argument("type")
    args = ap.parse_args()
    if args.cmd == "same-bytes":
        print(json.dumps(same_bytes(args.source, args.ours, args.type)))
        return
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    for f in args.files:
        ppl, n = perplexity(f, text, args.tokens, args.window)
        print(json.dumps({"file": f, "ppl": ppl, "predictions": n}), flush=True)


if __name__ == "__main__":
    main()
