#!/usr/bin/env python3
"""One native run of the browser benchmark's workload (pkg-scripts/bench-browser): a prompt
prefilled, then N greedy tokens decoded, f16 KV cache, 512-position context. Prints one JSON
object: prompt_tokens, generated_tokens, ttft_ms, prefill_tok_s, decode_tok_s, load_ms,
peak_rss_bytes (and llama.cpp's own timings under "engine").

usage: bench-native.py webgguf CLI MODEL PROMPT_FILE N_PREDICT THREADS
         the native CLI (`webgguf generate --json`): its own stats; peak RSS of the process
       bench-native.py llama-cpp MODEL PROMPT_FILE N_PREDICT THREADS
         llama.cpp through llama-cpp-python (run with the Python that has it installed),
         timed as the browser benchmark times its engines: TTFT = prefill + first greedy
         token, decode = (N - 1) / (first → last token); llama_perf_context's own figures
         beside them; peak RSS of this process (Python's ~30 MB included)
"""
import json
import resource
import subprocess
import sys
import time


def webgguf(cli, model, prompt_file, n_predict, threads):
    prompt = open(prompt_file, encoding="utf-8").read()
    out = subprocess.run([cli, "generate", "--model", model, "--prompt", prompt, "--temperature", "0",
                          "--max-tokens", str(n_predict), "--kv", "f16", "--ctx", "512", "--device", "cpu",
                          "--threads", str(threads), "--json"], check=True, capture_output=True, text=True).stdout
    s = json.loads(out)["stats"]
    return {"prompt_tokens": s["prompt_tokens"], "generated_tokens": s["generated_tokens"], "ttft_ms": s["ttft_ms"],
            "prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"], "load_ms": None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def llama_cpp(model, prompt_file, n_predict, threads):
    import llama_cpp
    import numpy as np

    prompt = open(prompt_file, encoding="utf-8").read()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16, verbose=False)
    load_ms = (time.perf_counter() - t0) * 1000
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)  # add_bos: as the file says
    ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()

    def greedy():
        # Reading the logits also synchronizes, which is where llama.cpp books its timings.
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))))

    llama_cpp.llama_perf_context_reset(ctx)
    t1 = time.perf_counter()
    llm.eval(ids)
    tok = greedy()
    ttft_ms = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    for _ in range(n_predict - 1):  # the first token came from the prefill, as in both browser engines
        llm.eval([tok])
        tok = greedy()
    decode_s = time.perf_counter() - t2
    perf = llama_cpp.llama_perf_context(ctx)
    return {"prompt_tokens": len(ids), "generated_tokens": n_predict, "ttft_ms": ttft_ms,
            "prefill_tok_s": len(ids) / (ttft_ms / 1000), "decode_tok_s": (n_predict - 1) / decode_s,
            "load_ms": load_ms, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "engine": {"prefill_tok_s": perf.n_p_eval / (perf.t_p_eval_ms / 1000),
                       "decode_tok_s": perf.n_eval / (perf.t_eval_ms / 1000)}}


def main():
    args = sys.argv[1:]
    if len(args) == 6 and args[0] == "webgguf":
        r = webgguf(args[1], args[2], args[3], int(args[4]), int(args[5]))
    elif len(args) == 5 and args[0] == "llama-cpp":
        r = llama_cpp(args[1], args[2], int(args[3]), int(args[4]))
    else:
        sys.exit(__doc__)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
