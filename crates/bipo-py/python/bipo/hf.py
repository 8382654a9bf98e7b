"""Steer a Hugging Face transformers model with bipo vectors (needs torch; imported on
use, never by ``import bipo``).

    import bipo, bipo.hf
    v = bipo.SteeringVector.load("vector.safetensors")
    with bipo.hf.apply(hf_model, v, 2.0):
        out = hf_model.generate(**inputs)

Layer L of a vector is added to the output of decoder block L at every position, the
convention bipo, llama.cpp and repeng share (``hidden_states[L+1]`` of
``output_hidden_states=True``). The hooks are removed when the ``with`` block ends,
also on an exception.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np

from . import BipoError, SteeringVector

# Where the decoder blocks live, by architecture (first match wins).
_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 1/2, Phi-3, SmolLM
    "model.language_model.layers",  # Gemma 3 and other multimodal wrappers
    "model.model.layers",  # PEFT-wrapped models
    "transformer.h",  # GPT-2, Falcon
    "gpt_neox.layers",  # Pythia
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder
)


def decoder_layers(hf_model) -> Sequence:
    """The model's decoder blocks, in order (``torch.nn.ModuleList``)."""
    for path in _LAYER_PATHS:
        obj = hf_model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "__len__") and len(obj) > 0:
            return obj
    raise BipoError(f"bipo.hf: cannot find the decoder layers of {type(hf_model).__name__} "
                    f"(looked for {', '.join(_LAYER_PATHS)})")


Steer = Union[SteeringVector, Tuple[SteeringVector, float], Sequence[Tuple[SteeringVector, float]]]


def _entries(vector, multiplier: float) -> List[Tuple[SteeringVector, float]]:
    if isinstance(vector, SteeringVector):
        return [(vector, float(multiplier))]
    if isinstance(vector, tuple) and len(vector) == 2 and isinstance(vector[0], SteeringVector):
        return [(vector[0], float(vector[1]) * float(multiplier))]
    out = []
    for i, e in enumerate(vector):
        v, m = (e, 1.0) if isinstance(e, SteeringVector) else e
        if not isinstance(v, SteeringVector):
            raise BipoError(f"bipo.hf: vectors[{i}]: expected a SteeringVector or (SteeringVector, multiplier)")
        out.append((v, float(m) * float(multiplier)))
    return out


@contextlib.contextmanager
def apply(hf_model, vector: Steer, multiplier: float = 1.0) -> Iterator[None]:
    """Within the block, ``hf_model`` runs steered: ``multiplier * vector`` (or the sum
    of several ``(vector, multiplier)`` pairs) added to the output of each of its layers'
    decoder blocks, at every position, in the model's dtype and on its device."""
    import torch

    layers = decoder_layers(hf_model)
    width = getattr(getattr(hf_model, "config", None), "hidden_size", None)
    total = {}
    for v, m in _entries(vector, multiplier):
        if not np.isfinite(m):
            raise BipoError(f"bipo.hf: multiplier {m} is not finite")
        if width is not None and v.hidden_size != width:
            raise BipoError(f"bipo.hf: vector {v.meta.get('name') or '?'} has width {v.hidden_size}, "
                            f"the model's hidden size is {width}")
        for l, a in v.layers.items():
            if l >= len(layers):
                raise BipoError(f"bipo.hf: vector layer {l}: the model has {len(layers)} layers (0..{len(layers) - 1})")
            total[l] = total.get(l, 0.0) + a.astype(np.float64) * m
    handles = []

    def hook_for(delta64: np.ndarray):
        cache = {}

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            key = (hidden.dtype, hidden.device)
            d = cache.get(key)
            if d is None:
                d = cache[key] = torch.from_numpy(delta64.astype(np.float32)).to(device=hidden.device,
                                                                                   dtype=hidden.dtype)
            steered = hidden + d
            return (steered,) + tuple(output[1:]) if isinstance(output, tuple) else steered

        return hook

    try:
        for l, delta in sorted(total.items()):
            handles.append(layers[l].register_forward_hook(hook_for(delta)))
        yield
    finally:
        for h in handles:
            h.remove()
