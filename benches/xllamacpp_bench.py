#!/usr/bin/env python3
"""Prompt and decode speed of the PyPI wheel xllamacpp (a prebuilt llama.cpp, run in
process), measured like `bipo bench`: a 128-token prompt, then 64 tokens decoded one at
a time; the median of 3 runs. Usage: python3 benches/xllamacpp_bench.py MODEL THREADS"""
import json
import statistics
import sys

import xllamacpp as xl

model, threads = sys.argv[1], int(sys.argv[2])
p = xl.CommonParams()
p.model.path = model
p.n_ctx = 512
p.cpuparams.n_threads = threads
p.cpuparams_batch.n_threads = threads
p.n_parallel = 1
s = xl.Server(p)
words = "The quick brown fox jumps over the lazy dog while the band plays on. " * 40
runs = []
for rep in range(4):
    # A token-id prompt of exactly 128 tokens, different per run (no prompt cache).
    ids = s.handle_completions({"prompt": f"{rep} " + words, "n_predict": 1, "return_tokens": True, "n_probs": 0})
    r = s.handle_completions({
        "prompt": list(range(1000 + rep, 1000 + rep + 128)), "n_predict": 64, "temperature": 0,
        "ignore_eos": True, "cache_prompt": False,
    })
    t = r["timings"]
    if rep:  # the first run warms up
        runs.append((t["prompt_per_second"], t["predicted_per_second"], t["prompt_n"], t["predicted_n"]))
print(json.dumps({
    "prompt_tok_s": statistics.median(x[0] for x in runs),
    "decode_tok_s": statistics.median(x[1] for x in runs),
    "prompt_n": runs[0][2],
    "decode_n": runs[0][3],
    "xllamacpp": xl.__version__,
}))
