#!/usr/bin/env python3
"""llama.cpp against its own oracle, measured as tests/oracle_cpu.rs measures us
(`teacher_forced`): over the oracle sequences of a model (prompt + greedy continuation, from
tests/fixtures/oracle/NAME.json), teacher-forced logits with an f32 KV cache; the share of
positions whose top-1 token is the oracle's, over all positions and over those where the
oracle's top-2 margin is >= 0.1 (issue 3's target: 99 %), and the mean |logit difference| over
the oracle's top-10 of each position.

Gives the reference's own spread beside our figures: the same llama.cpp version built another
way (target/llama-cpp-python: native, e.g. AVX-512 here; target/llama-cpp-python-avx2: AVX2
only, as the oracle's machine), on 1 or 2 threads, evaluating each sequence in one batch (as the
oracle was made) or token by token (n_batch 1).

usage (with the Python that has llama_cpp, e.g. target/llama-cpp-python/bin/python):
  pkg-scripts/oracle-agreement-llama-cpp.py MODEL.gguf ORACLE.json [--label L]
Prints one JSON object: {"model", "label", "date", "machine", "positions", "confident_positions",
"runs": {"T threads, batch B": {"all", "confident", "mean_abs_logit_diff"}}}.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("oracle")
    ap.add_argument("--label", default="", help="what this llama.cpp build is, for the JSON")
    args = ap.parse_args()

    import llama_cpp
    import numpy as np
    from llama_cpp_eval import provenance, teacher_forced_logits

    oracle = json.load(open(args.oracle, encoding="utf-8"))
    cases = oracle["cases"]
    seqs = [c["prompt_ids"] + c["greedy_ids"] for c in cases]
    n_ctx = max(len(s) for s in seqs) + 8
    result = {"model": os.path.basename(args.model), "label": args.label, **provenance(), "runs": {}}
    for threads, batch in ((2, n_ctx), (1, n_ctx), (1, 1)):
        llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                              n_threads=threads, n_threads_batch=threads, logits_all=True,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
        same_all = same_conf = n_all = n_conf = 0
        diff, n_diff = 0.0, 0
        for case, seq in zip(cases, seqs):
            logits = teacher_forced_logits(llm, seq)
            for row, top in zip(logits, case["teacher_forced_top"]):
                same = int(np.argmax(row)) == top["ids"][0]
                n_all += 1
                same_all += same
                if top["logits"][0] - top["logits"][1] >= 0.1:
                    n_conf += 1
                    same_conf += same
                for i, want in zip(top["ids"], top["logits"]):
                    diff += abs(float(row[i]) - want)
                    n_diff += 1
        del llm
        name = f"{threads} thread{'s' if threads > 1 else ''}, " + ("token by token" if batch == 1 else "one batch")
        result["positions"], result["confident_positions"] = n_all, n_conf
        result["runs"][name] = {"all": same_all / n_all, "confident": same_conf / n_conf,
                                "mean_abs_logit_diff": diff / n_diff}
        print(f"{name}: {result['runs'][name]}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
