"""bipo.hf.apply: a bipo vector steering a Hugging Face transformers model through
forward hooks gives the logits bipo computes on the same weights (within 1e-4), on the
tiny random model of every family fixture (crates/bipo/tests/fixtures/families, made by
transformers itself). Needs torch + transformers: run by scripts/test-python-hf.sh
(opt-in: torch is a multi-GB download, too much for every CI run)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import bipo
import bipo.hf

FAMILIES = Path(__file__).resolve().parents[2] / "bipo" / "tests" / "fixtures" / "families"
NAMES = sorted(p.name for p in FAMILIES.iterdir() if (p / "config.json").is_file())


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("family", NAMES)
def test_apply_gives_bipos_steered_logits(family):
    path = FAMILIES / family
    ref = json.loads((path / "reference.json").read_text())
    ids = ref["input_ids"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    m = bipo.Model.load(path)
    n_layers = m.num_layers
    rng = np.random.default_rng(7)
    v = bipo.SteeringVector.from_numpy({l: 0.5 * rng.standard_normal(m.hidden_size).astype(np.float32)
                                        for l in (0, ref["steer_layer"], n_layers - 1)}, name="r")
    w = bipo.SteeringVector.from_numpy({1: rng.standard_normal(m.hidden_size).astype(np.float32)}, name="w")
    base = hf_logits(hf, ids)
    np.testing.assert_allclose(m.logits(ids), base, rtol=0, atol=1e-4, err_msg=f"{family}: unsteered")
    for steer in ([(v, 1.5)], [(v, -2.0), (w, 0.5)]):
        with bipo.hf.apply(hf, steer):
            steered = hf_logits(hf, ids)
        mine = m.logits(ids, steer)
        assert np.abs(steered - base).max() > 1e-2, f"{family}: the hooks changed nothing"
        np.testing.assert_allclose(mine, steered, rtol=0, atol=1e-4, err_msg=f"{family}: steered {steer}")
    # The hooks are gone after the block, also after an exception inside it.
    with pytest.raises(RuntimeError):
        with bipo.hf.apply(hf, v, 3.0):
            raise RuntimeError("inside")
    np.testing.assert_array_equal(hf_logits(hf, ids), base)
    # The fixture's own reference: transformers with its hook at one layer.
    one = bipo.SteeringVector.from_numpy({ref["steer_layer"]: np.asarray(ref["vector"], dtype=np.float32)})
    with bipo.hf.apply(hf, one):
        np.testing.assert_allclose(hf_logits(hf, ids), np.asarray(ref["steered_logits"]), rtol=0, atol=1e-4)


def test_apply_refuses_vectors_that_do_not_fit():
    path = FAMILIES / "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n = len(bipo.hf.decoder_layers(hf))
    with pytest.raises(bipo.BipoError, match="width 8"):
        with bipo.hf.apply(hf, bipo.SteeringVector.from_numpy({0: np.ones(8, np.float32)})):
            pass
    with pytest.raises(bipo.BipoError, match=f"layer {n}"):
        with bipo.hf.apply(hf, bipo.SteeringVector.from_numpy({n: np.ones(hf.config.hidden_size, np.float32)})):
            pass
    with pytest.raises(bipo.BipoError, match="decoder layers"):
        bipo.hf.decoder_layers(torch.nn.Linear(2, 2))
