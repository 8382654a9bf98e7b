#!/usr/bin/env python3
"""A real LoRA fine-tune of the default model, for the transfer experiment: PEFT LoRA
(r 8, alpha 16, q/k/v/o/up/down projections) trained with transformers on the project's
optimism pairs (data/optimism/train.csv: the optimistic answers as chat responses; loss
on the response tokens only), 2 epochs, batch 4, lr 1e-3, seed 0, on the GGUF's weights
as transformers dequantizes them. Saves the adapter (PEFT's save_pretrained) to argv[2].

    python3 make_lora.py models/SmolLM2-135M-Instruct.Q4_1.gguf out/transfer/lora
Needs torch, transformers, peft, gguf.
"""
import csv
import os
import random
import sys

import peft
import torch
import transformers

gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
torch.manual_seed(0)
random.seed(0)
tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
model = peft.get_peft_model(model, peft.LoraConfig(
    r=8, lora_alpha=16, lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
rows = list(csv.DictReader(open(os.path.join(os.path.dirname(__file__), "../../../data/optimism/train.csv"))))


def encode(r):
    prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                     add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(r["matching"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


data = [encode(r) for r in rows]
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
model.train()
step = 0
for epoch in range(2):
    random.shuffle(data)
    for i in range(0, len(data), 4):
        batch = data[i:i + 4]
        n = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.eos_token_id] * (n - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        if step % 10 == 0:
            print(f"epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)
model.save_pretrained(out)
print("saved", out)
