#!/usr/bin/env python3
"""Writes crates/bipo/tests/fixtures/lora/<family>/: a PEFT LoRA adapter for the tiny
family fixture of the same name (crates/bipo/tests/fixtures/families/<family>/, made by
make-family-fixtures.py), saved by PEFT's own `save_pretrained` (adapter_config.json +
adapter_model.safetensors), and the logits PEFT computes with the adapter active and
*unmerged* (y = W x + scale * B A x), so bipo's merge at load is checked against PEFT's
forward, not against a second copy of its own arithmetic.

- llama: every projection, r 4, alpha 8 (scale 2), alpha_pattern {"down_proj": 2}
  (scale 0.5 there); the fixture's GGUF stores Q/K rows permuted, so loading the GGUF
  with the adapter checks that the delta lands in Hugging Face row order.
- qwen2: q/v only, r 2, alpha 3, use_rslora (scale alpha / sqrt(r)), layers 0 and 2.

Run once; CI only reads the files. Needs torch, transformers, peft:

    python3 scripts/make-lora-fixtures.py
"""
import json
import os

import peft
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = os.path.join(ROOT, "crates/bipo/tests/fixtures/families")
OUT = os.path.join(ROOT, "crates/bipo/tests/fixtures/lora")
SEED = 4321

ADAPTERS = {
    "llama": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        alpha_pattern={"down_proj": 2},
    ),
    "qwen2": dict(
        r=2,
        lora_alpha=3,
        target_modules=["q_proj", "v_proj"],
        use_rslora=True,
        layers_to_transform=[0, 2],
    ),
}


def make(family, kwargs):
    base = os.path.join(FAMILIES, family)
    reference = json.load(open(os.path.join(base, "reference.json")))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        base, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()
    config = peft.LoraConfig(init_lora_weights=False, lora_dropout=0.0, **kwargs)
    torch.manual_seed(SEED)
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        # init_lora_weights=False draws B too, but small: make every delta visible.
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(3.0)
    path = os.path.join(OUT, family)
    model.save_pretrained(path)
    os.remove(os.path.join(path, "README.md"))  # PEFT's model-card template
    cfg_path = os.path.join(path, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = os.path.relpath(base, ROOT)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    ids = torch.tensor([reference["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    base_logits = torch.tensor(reference["logits"])
    out = {
        "family": family,
        "adapter": {k: v for k, v in kwargs.items()},
        "made_by": f"peft {peft.__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}, f32, adapter unmerged",
        "input_ids": reference["input_ids"],
        "logits": logits.tolist(),
        "max_change_from_base": float((logits - base_logits).abs().max()),
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(out, f)
    print(family, "max |logit change| from the base model:", out["max_change_from_base"])


if __name__ == "__main__":
    for fam, kw in ADAPTERS.items():
        make(fam, kw)
