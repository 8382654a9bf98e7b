#!/usr/bin/env python3
"""The BiPO reference algorithm in PyTorch (eager, fp32), for side-by-side timing with
`bipo bench-train`: every step runs a full steered forward and backward (the vector
added by a forward hook at block L's output, weights frozen) and two full unsteered
reference forwards, and computes log-probabilities from full-vocabulary logits at every
position, as the paper's released code does. Not part of the product or the tests.

usage: python3 benches/reference_bipo_step.py MODEL_DIR GGUF_NAME DATA.csv [LAYER] [STEPS] [DEVICE]
DEVICE: cpu (default, 2 threads) or cuda; on cuda the first step is a warm-up, not timed.
"""
import csv, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, gguf, data = sys.argv[1:4]
layer = int(sys.argv[4]) if len(sys.argv) > 4 else 15
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
dev = torch.device(sys.argv[6] if len(sys.argv) > 6 else "cpu")
if dev.type == "cpu":
    torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32).to(dev)
tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
rows = [r for r in csv.DictReader(open(data)) if all(v.strip() for v in r.values())]
v = torch.zeros(model.config.hidden_size, requires_grad=True, device=dev)
state = {"delta": None}

def hook(_mod, _inp, out):
    if state["delta"] is None:
        return out
    if isinstance(out, tuple):
        return (out[0] + state["delta"],) + tuple(out[1:])
    return out + state["delta"]

model.model.layers[layer].register_forward_hook(hook)
eos = tok.convert_tokens_to_ids("<|im_end|>")

def batch(pairs, which):
    seqs, masks = [], []
    for r in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False).input_ids
        a = tok(r[which], add_special_tokens=False).input_ids + [eos]
        seqs.append(p + a)
        masks.append([0] * len(p) + [1] * len(a))
    t = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs])
    m = torch.tensor([x + [0] * (t - len(x)) for x in masks], dtype=torch.float32)
    return ids.to(dev), m.to(dev)

def logp(ids, mask):
    logits = model(ids).logits[:, :-1]
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask[:, 1:]).sum(-1)

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

warm = 1 if dev.type == "cuda" else 0
times = []
for s in range(steps + warm):
    pairs = rows[4 * s: 4 * s + 4]
    (im, mm), (io, mo) = batch(pairs, "matching"), batch(pairs, "not_matching")
    d = 1.0 if s % 2 == 0 else -1.0
    t0 = time.perf_counter()
    state["delta"] = d * v
    pol_m, pol_o = logp(im, mm), logp(io, mo)
    state["delta"] = None
    with torch.no_grad():
        ref_m, ref_o = logp(im, mm), logp(io, mo)
    loss = -torch.nn.functional.logsigmoid(0.1 * d * ((pol_m - ref_m) - (pol_o - ref_o))).mean()
    loss.backward()
    sync()
    if s >= warm:
        times.append(time.perf_counter() - t0)
    v.grad = None
print(f"pytorch {torch.__version__} ({dev}) reference step (median of {steps}): {statistics.median(times):.3f} s; all: {[round(t, 3) for t in times]}")
