"""Shared by the pkg-scripts that read llama.cpp's logits through llama-cpp-python
(kv-agreement-llama-cpp.py, ladder-llama-cpp.py, oracle-agreement-llama-cpp.py)."""
import numpy as np


def teacher_forced_logits(llm, seq):
    """float32 logits [len(seq), n_vocab] of `seq` evaluated from an empty cache (the context
    needs logits_all=True); llama.cpp evaluates it in pieces of the context's n_batch."""
    llm.reset()
    llm.eval(seq)
    return np.asarray(llm.scores[: len(seq)], dtype=np.float32)
