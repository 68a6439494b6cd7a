"""Shared by the pkg-scripts that read llama.cpp's logits through llama-cpp-python
(kv-agreement-llama-cpp.py, ladder-llama-cpp.py, oracle-agreement-llama-cpp.py)."""
import datetime
import os

import numpy as np


def teacher_forced_logits(llm, seq):
    """float32 logits [len(seq), n_vocab] of `seq` evaluated from an empty cache (the context
    needs logits_all=True); llama.cpp evaluates it in pieces of the context's n_batch."""
    llm.reset()
    llm.eval(seq)
    return np.asarray(llm.scores[: len(seq)], dtype=np.float32)


def provenance():
    """{"date", "machine"} for a result's JSON (pkg-scripts/docs-tables prints them with its table)."""
    import llama_cpp
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{cpu}, {os.cpu_count()} cores; llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"}
