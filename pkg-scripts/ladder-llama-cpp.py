#!/usr/bin/env python3
"""llama.cpp's perplexity on the quantization ladder's files, to check `webgguf eval`'s figures
(docs/quant-ladder.*) against llama.cpp on the same bytes: the same text (the start of GPL-3),
the same tokens (the first TOKENS, tokenized by llama.cpp without BOS or special parsing), the
same windows (WINDOW positions from an empty cache, BOS first when the file adds one, every
position with a predecessor in its window predicted).

usage: ladder-llama-cpp.py FILE.gguf... [--tokens 1024] [--window 256]
Run with a Python that has llama-cpp-python (pkg-scripts/bench-browser sets one up in
target/llama-cpp-python). Prints one JSON object per file: {"file", "ppl", "predictions"}.
"""
import argparse
import json
import math

import llama_cpp
import numpy as np


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
        llm.reset()
        llm.eval(seq)
        logits = np.asarray(llm.scores[: len(seq)], dtype=np.float64)
        for i in range(len(seq) - 1):
            row = logits[i]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll += lse - row[seq[i + 1]]
            count += 1
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    for f in args.files:
        ppl, n = perplexity(f, text, args.tokens, args.window)
        print(json.dumps({"file": f, "ppl": ppl, "predictions": n}), flush=True)


if __name__ == "__main__":
    main()
