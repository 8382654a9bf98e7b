#!/usr/bin/env python3
"""Writes crates/bipo/tests/fixtures/families/<family>/: a tiny random model made by
Hugging Face transformers itself (config.json, model.safetensors in f16, a word-level
tokenizer) and the logits transformers computes on a fixed input, unsteered and with a
steering vector added to one decoder layer's output by a forward hook (bipo's
convention: layer L = hidden_states[L+1]). With --gguf LLAMA_CPP_DIR it also converts
each model with llama.cpp's own convert_hf_to_gguf.py (f32) into model.gguf, so the GGUF
naming and conventions (Q/K permutation, Gemma's 1 + w norms) are llama.cpp's.

Run once to make fixtures; CI only reads them. Needs torch + transformers (CPU is
enough), and for --gguf the llama.cpp source tree plus the `gguf` package:

    python3 scripts/make-family-fixtures.py [--gguf PATH/TO/llama.cpp]
"""
import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/bipo/tests/fixtures/families")

VOCAB = 64
INPUT = [1, 7, 23, 5, 61, 12, 40, 9, 33, 18, 50, 2]  # 12 tokens: longer than every window
STEER_LAYER = 1
SEED = 1234

BASE = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# family -> (transformers config class, model class, extra config, traits note)
FAMILIES = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            tie_word_embeddings=True,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        "Llama-3.2: llama3 rope scaling, tied embeddings",
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(sliding_window=4),
        "sliding window 4 on every layer (llama.cpp's llama arch ignores it)",
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(), "q/k/v biases"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(), "per-head q/k RMSNorm"),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            num_hidden_layers=4,
            sliding_window=4,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        "sandwich norms, 1 + w, GeGLU, soft-capping, alternating window",
    ),
    # llama.cpp derives the attention scale from head_dim (query_pre_attn_scalar is not
    # in its GGUFs), so a scalar that differs is checked on the Hugging Face path only.
    "gemma2-scalar": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(num_hidden_layers=2, sliding_window=4, query_pre_attn_scalar=24),
        "query_pre_attn_scalar != head_dim (Hugging Face only)",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=6,
            sliding_window=4,
            query_pre_attn_scalar=16,
            rope_scaling=dict(rope_type="linear", factor=2.0),
        ),
        "q/k norms, local/global rope bases, 5 local : 1 global, linear scaling",
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(sliding_window=4, head_dim=None),
        "fused qkv and gate_up projections, sliding window (llama.cpp ignores it)",
    ),
}

# Families whose GGUF is not made (their point is a setting llama.cpp cannot carry).
HF_ONLY = {"gemma2-scalar"}
# llama.cpp ignores these families' sliding window: on the GGUF the logits agree with
# transformers only at positions before the window takes effect.
GGUF_WINDOW_IGNORED = {"mistral", "phi3"}


def tokenizer(path):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f)


def randomize(model, gemma):
    """Weights large enough that every op shows in the logits; norms near 1 (Gemma
    stores w for a 1 + w scale, so near 0)."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_((0.0 if gemma else 1.0) + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.25 * noise)
            # The fixture stores f16: compute the reference from the same values.
            p.copy_(p.half().float())


def logits(model, hook=None):
    ids = torch.tensor([INPUT])
    handle = None
    if hook is not None:
        layer = model.model.layers[STEER_LAYER]

        def add(_module, _inputs, output):
            if isinstance(output, tuple):
                return (output[0] + hook,) + tuple(output[1:])
            return output + hook

        handle = layer.register_forward_hook(add)
    with torch.no_grad():
        out = model(input_ids=ids).logits[0].float()
    if handle:
        handle.remove()
    return out.tolist()


def make(family, gguf_dir):
    cfg_cls, model_cls, extra, traits = FAMILIES[family]
    kwargs = dict(BASE)
    kwargs.update(extra)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    torch.manual_seed(SEED)
    config = getattr(transformers, cfg_cls)(**kwargs)
    config._attn_implementation = "eager"  # exact soft-capping and windows
    model = getattr(transformers, model_cls)(config).float().eval()
    randomize(model, family.startswith("gemma"))
    path = os.path.join(OUT, family)
    os.makedirs(path, exist_ok=True)
    model.config.architectures = [model_cls]
    model.config.save_pretrained(path)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tokenizer(path)
    g = torch.Generator().manual_seed(SEED + 1)
    vector = (0.5 * torch.randn(BASE["hidden_size"], generator=g)).half().float()
    reference = {
        "family": family,
        "traits": traits,
        "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, eager attention, f32",
        "input_ids": INPUT,
        "logits": logits(model),
        "steer_layer": STEER_LAYER,
        "vector": vector.tolist(),
        "steered_logits": logits(model, vector),
    }
    reference["gguf_positions"] = (
        kwargs["sliding_window"] if family in GGUF_WINDOW_IGNORED else len(INPUT)
    )
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(reference, f)
    if gguf_dir and family not in HF_ONLY:
        convert(path, gguf_dir)
        if family.startswith("gemma"):
            # llama.cpp's converter adds Gemma's 1 to the norms in the checkpoint's dtype
            # (f16 here, bf16 for real models), so the GGUF holds 1 + w rounded. The
            # GGUF's reference is transformers on exactly those norms: w' = n - 1.
            gguf_norms(model, os.path.join(path, "model.gguf"))
            reference["gguf_logits"] = logits(model)
            reference["gguf_steered_logits"] = logits(model, vector)
            with open(os.path.join(path, "reference.json"), "w") as f:
                json.dump(reference, f)
    print(f"{family}: {path}")


GGUF_NORMS = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


def gguf_norms(model, gguf_path):
    """Sets a Gemma model's norm weights to what the GGUF holds (stored 1 + w)."""
    import gguf

    params = dict(model.named_parameters())
    for t in gguf.GGUFReader(gguf_path).tensors:
        parts = t.name.split(".")
        if t.name == "output_norm.weight":
            hf = "model.norm.weight"
        elif parts[0] == "blk" and parts[2] in GGUF_NORMS:
            hf = f"model.layers.{parts[1]}.{GGUF_NORMS[parts[2]]}.weight"
        else:
            continue
        with torch.no_grad():
            params[hf].copy_(torch.tensor(t.data, dtype=torch.float32).reshape(params[hf].shape) - 1)


def convert(path, llama_cpp):
    """llama.cpp's converter, with its tokenizer step replaced by a minimal gpt2-style
    vocabulary (the converter only knows the tokenizers of released models)."""
    sys.path.insert(0, llama_cpp)
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    import convert_hf_to_gguf as conv
    import gguf
    from pathlib import Path

    def set_vocab(self):
        # llama.cpp requires at least one merge: "a" + "b" -> "ab".
        tokens = ["<pad>", "<s>", "</s>", "a", "b", "ab"] + [f"w{i}" for i in range(6, VOCAB)]
        self.gguf_writer.add_tokenizer_model("gpt2")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list(tokens)
        self.gguf_writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (VOCAB - 3))
        self.gguf_writer.add_token_merges(["a b"])
        self.gguf_writer.add_bos_token_id(1)
        self.gguf_writer.add_eos_token_id(2)

    hparams = conv.ModelBase.load_hparams(Path(path), False)
    arch = conv.get_model_architecture(hparams, conv.ModelType.TEXT)
    cls = conv.get_model_class(arch, mmproj=False)
    cls.set_vocab = set_vocab
    out = Path(path) / "model.gguf"
    with torch.inference_mode():
        model = cls(Path(path), gguf.LlamaFileType.ALL_F32, out)
        model.write()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", metavar="LLAMA_CPP_DIR", help="also convert with llama.cpp's converter")
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    a = ap.parse_args()
    for fam in a.families:
        make(fam, a.gguf)
