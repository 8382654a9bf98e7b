"""The Python package on the default model: generation equals `bipo generate` token for
token, steering invariants, vectors through numpy and every file format, errors.
Run by scripts/test-python.sh (part of scripts/test.sh)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bipo

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HAPPY = ROOT / "assets" / "happy-control-vector.gguf"
BIN = os.environ.get("BIPO_BIN", str(ROOT / "target" / "release" / "bipo"))


def cli_ids(*args):
    """Token ids `bipo generate` produces (one JSON line per token with --logprobs)."""
    out = subprocess.run([BIN, "-q", "generate", "-m", str(MODEL), "--logprobs", "1", *args],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(l)["id"] for l in out.splitlines() if l.strip()]


def test_model_info(model):
    assert model.num_layers == 30 and model.hidden_size == 576
    assert model.info["family"] and model.info["has_chat_template"]
    assert "layers" in repr(model)


@pytest.mark.parametrize("mult,positions", [(None, "all"), (4.0, "all"), (-3.0, "prompt"), (5.0, "generated")])
def test_generate_equals_the_cli_token_for_token(model, happy, mult, positions):
    q = "How was your day?"
    vectors = [] if mult is None else [(happy, mult)]
    g = model.generate(q, vectors, max_tokens=20, positions=positions)
    args = ["--chat", "-p", q, "--max-tokens", "20", "--positions", positions]
    if mult is not None:
        args += ["-v", f"{HAPPY}:{mult}"]
    assert g.ids == cli_ids(*args)
    assert g.prompt_tokens == len(model.tokenize(q))
    assert g.finish_reason in ("eos", "length", "stop")
    assert str(g) == g.text


def test_raw_prompts_and_sampling_are_reproducible(model):
    g = model.generate("The capital of France is", chat=False, max_tokens=5)
    assert g.ids == cli_ids("-p", "The capital of France is", "--max-tokens", "5")
    a = model.generate("Tell me a story.", max_tokens=12, temperature=0.9, seed=7)
    b = model.generate("Tell me a story.", max_tokens=12, temperature=0.9, seed=7)
    assert a.ids == b.ids
    full = model.generate("Count from one to ten.", max_tokens=40).text
    cut = full[len(full) // 2:len(full) // 2 + 3]
    stopped = model.generate("Count from one to ten.", max_tokens=40, stop=[cut])
    assert stopped.finish_reason == "stop" and stopped.text == full[:full.index(cut)]


def test_steering_invariants(model, happy):
    prompt, cont = "I feel", " great today, thank you"
    ids, base = model.logprobs(prompt, cont)
    _, zero = model.logprobs(prompt, cont, [(happy, 0.0)])
    assert np.array_equal(base, zero), "multiplier 0 must be bit-identical to unsteered"
    _, twice = model.logprobs(prompt, cont, [(happy, 2.0)])
    _, scaled = model.logprobs(prompt, cont, [(happy * 2, 1.0)])
    np.testing.assert_allclose(twice, scaled, atol=1e-5)
    _, summed = model.logprobs(prompt, cont, [(happy, 1.0), (happy, 1.0)])
    np.testing.assert_allclose(twice, summed, atol=1e-5)
    assert len(ids) == len(base) and np.all(base <= 0)
    assert not np.allclose(base, twice), "steering changed nothing"


def test_vectors_round_trip_through_numpy_and_every_format(tmp_path, happy):
    assert len(happy.layers) == 29 and happy.hidden_size == 576
    assert all(a.dtype == np.float32 for a in happy.layers.values())
    for name in ("v.safetensors", "v.gguf"):
        p = tmp_path / name
        happy.save(p)
        back = bipo.SteeringVector.load(p)
        assert back == happy, name
    v = bipo.SteeringVector.from_numpy({3: np.arange(576, dtype=np.float64)}, name="ramp")
    v.save(tmp_path / "ramp.safetensors")
    r = bipo.SteeringVector.load(tmp_path / "ramp.safetensors")
    assert r == v and r.meta["name"] == "ramp"
    np.testing.assert_array_equal(r.layers[3], np.arange(576, dtype=np.float32))
    assert np.allclose(list(happy.normalize(2.0).norms().values()), 2.0, atol=1e-5)
    assert all(not a.any() for a in (happy - happy).layers.values())
    np.testing.assert_array_equal((-happy).layers[10], -happy.layers[10])
    both = happy + v
    assert set(both.layers) == set(happy.layers) | {3}


def test_errors_are_bipo_errors_with_the_cli_message(tmp_path, model, happy):
    with pytest.raises(bipo.BipoError, match="nope.gguf"):
        bipo.Model.load(tmp_path / "nope.gguf")
    with pytest.raises(bipo.BipoError, match="nope.safetensors"):
        bipo.SteeringVector.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a vector")
    with pytest.raises(bipo.BipoError, match="junk.safetensors"):
        bipo.SteeringVector.load(junk)
    wide = bipo.SteeringVector.from_numpy({2: np.ones(100)})
    with pytest.raises(bipo.BipoError, match="100"):
        model.generate("Hi", [(wide, 1.0)], max_tokens=2)
    with pytest.raises(bipo.BipoError, match="positions"):
        model.generate("Hi", [(happy, 1.0)], max_tokens=2, positions="some")
    with pytest.raises(bipo.BipoError, match="NaN"):
        bipo.SteeringVector.from_numpy({1: np.array([1.0, np.nan])})
    with pytest.raises(bipo.BipoError, match="temperature"):
        model.generate("Hi", max_tokens=2, temperature=-1)
    out = tmp_path / "v.safetensors"
    happy.save(out)
    with pytest.raises(bipo.BipoError):
        happy.save(tmp_path / "no-such-folder" / "v.safetensors")
    assert issubclass(bipo.BipoError, Exception)


def _pairs_csv(tmp_path, n=8):
    lines = (ROOT / "data" / "optimism" / "train.csv").read_text().splitlines()
    p = tmp_path / "pairs.csv"
    p.write_text("\n".join(lines[: n + 1]) + "\n")
    return p


SETTINGS = dict(epochs=2, batch_size=2, seed=3, lr=0.01, warmup_steps=0)


def test_train_equals_bipo_train_bit_for_bit(tmp_path, model):
    data = _pairs_csv(tmp_path)
    cli = tmp_path / "cli"
    subprocess.run([BIN, "-q", "train", "-m", str(MODEL), "--data", str(data), "--layer", "12", "--epochs", "2",
                    "--batch-size", "2", "--seed", "3", "--lr", "0.01", "--warmup-steps", "0", "-o", str(cli)],
                   check=True, capture_output=True)
    seen = []
    r = bipo.train(model, data, out=tmp_path / "py", layer=12, progress=seen.append, **SETTINGS)
    ref = bipo.SteeringVector.load(cli / "vector.safetensors")
    assert list(r.vector.layers) == [12]
    assert np.array_equal(r.vector.layers[12], ref.layers[12]), "not the CLI's vector bit for bit"
    steps = [d for d in seen if d["kind"] == "step"]
    assert r.steps == 8 and [d["step"] for d in steps] == list(range(1, 9))
    assert {d["total"] for d in steps} == {8}
    assert [d["epoch"] for d in seen if d["kind"] == "epoch"] == [1, 2]
    assert r.record["config"]["layer"] == 12 and r.record["data"]["sha256"]
    # The same pairs as Python dicts train the same vector.
    rows = [dict(question=q, matching=m, not_matching=n) for q, m, n in
            (l for l in __import__("csv").reader(data.open()) if l[0] != "question")]
    r2 = bipo.train(model, rows, out=tmp_path / "py2", layer=12, **SETTINGS)
    assert r2.vector == r.vector
    with pytest.raises(bipo.BipoError, match="--force|force|holds a run|already"):
        bipo.train(model, rows, out=tmp_path / "py2", layer=12, **SETTINGS)
    with pytest.raises(bipo.BipoError, match="layer 99"):
        bipo.train(model, rows, out=tmp_path / "py3", layer=99, **SETTINGS)
    with pytest.raises(bipo.BipoError, match="nope"):
        bipo.train(model, rows, out=tmp_path / "py4", layer=12, nope=1)


def test_an_interrupted_run_keeps_a_checkpoint_and_resumes_to_the_same_vector(tmp_path, model):
    data = _pairs_csv(tmp_path)
    full = bipo.train(model, data, out=tmp_path / "full", layer=12, **SETTINGS)

    def interrupt(d):
        if d["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bipo.train(model, data, out=tmp_path / "cut", layer=12, progress=interrupt, **SETTINGS)
    assert (tmp_path / "cut" / "checkpoint.json").is_file()
    resumed = bipo.train(model, data, out=tmp_path / "cut", layer=12, resume=True, **SETTINGS)
    assert resumed.vector == full.vector


@pytest.mark.parametrize("method", ["caa", "pca", "mean-centring"])
def test_baselines_equal_bipo_baseline_bit_for_bit(tmp_path, model, method):
    data = _pairs_csv(tmp_path, 12)
    out = tmp_path / f"{method}.safetensors"
    subprocess.run([BIN, "-q", "baseline", method, "-m", str(MODEL), "--data", str(data), "--layer", "10",
                    "--layer", "14", "-o", str(out)], check=True, capture_output=True)
    ref = bipo.SteeringVector.load(out)
    v = bipo.baseline(model, data, method, layers=[10, 14])
    assert list(v.layers) == [10, 14]
    assert v == ref, f"{method}: not the CLI's vector bit for bit"


def test_random_control_equals_the_cli(tmp_path, model, happy):
    out = tmp_path / "r.safetensors"
    subprocess.run([BIN, "-q", "baseline", "random", "--like", str(HAPPY), "--seed", "5", "-o", str(out)],
                   check=True, capture_output=True)
    r = happy.random_like(5)
    assert r == bipo.SteeringVector.load(out)
    np.testing.assert_allclose(list(r.norms().values()), list(happy.norms().values()), rtol=1e-5)
    with pytest.raises(bipo.BipoError, match="method"):
        bipo.baseline(model, _pairs_csv(tmp_path), "lda", layers=3)
