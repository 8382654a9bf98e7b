"""The Python package, part 2: evaluation equal to `bipo eval`, held-out test sets in
training, logits, real Ctrl-C (SIGINT) handling, tqdm progress, repeng interop.
Run by scripts/test-python.sh (part of scripts/test.sh)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import bipo

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HAPPY = ROOT / "assets" / "happy-control-vector.gguf"
DATA = ROOT / "data" / "optimism"
BIN = os.environ.get("BIPO_BIN", str(ROOT / "target" / "release" / "bipo"))
SETTINGS = dict(epochs=2, batch_size=2, seed=3, lr=0.01, warmup_steps=0)


def _csv(tmp_path, name, src, n):
    lines = (DATA / src).read_text().splitlines()
    p = tmp_path / name
    p.write_text("\n".join(lines[: n + 1]) + "\n")
    return p


def test_evaluate_equals_bipo_eval(tmp_path, model, happy):
    test = _csv(tmp_path, "test.csv", "test.csv", 6)
    sad = -happy
    sad.meta["name"] = "sad"
    sad_file = tmp_path / "sad.safetensors"
    sad.save(sad_file)
    cli_out = tmp_path / "cli"
    subprocess.run([BIN, "-q", "eval", "-m", str(MODEL), "-v", f"{HAPPY}:happy", "-v", str(sad_file),
                    "--data", str(test), "--multipliers=-1,0,2", "--open-ended", "2", "--max-tokens", "6",
                    "-o", str(cli_out)], check=True, capture_output=True)
    ref = json.loads((cli_out / "report.json").read_text())
    happy.meta["name"] = "happy"
    seen = []
    r = bipo.evaluate(model, [happy, sad], test, [-1, 0, 2], open_ended=2, max_tokens=6, out=tmp_path / "py",
                      progress=seen.append)
    assert [v["name"] for v in r["vectors"]] == ["happy", "sad"]
    for mine, theirs in zip(r["vectors"], ref["vectors"]):
        for key in ("pref_margin", "pref_accuracy", "kl", "perplexity", "norms"):
            assert mine[key] == theirs[key], f"{mine['name']}: {key} differs from bipo eval"
        assert mine["steerability_pref"]["slopes"] == theirs["steerability_pref"]["slopes"]
    cli_answers = [json.loads(l) for l in (cli_out / "answers.jsonl").read_text().splitlines()]
    assert r.answers == cli_answers and len(r.answers) == 2 * 3 * 2
    assert (tmp_path / "py" / "report.json").is_file() and (tmp_path / "py" / "answers.jsonl").is_file()
    assert json.loads((tmp_path / "py" / "report.json").read_text())["vectors"] == r["vectors"]
    # Happy raises the optimistic answer's margin, its negation lowers it.
    margins = {p["multiplier"]: p["value"] for p in r["vectors"][0]["pref_margin"]}
    assert margins[2.0] > margins[0.0] > margins[-1.0]
    assert "happy" in r.markdown and "| " in r.markdown
    assert seen and {"stage", "done", "total"} <= set(seen[0])
    rows = r.rows()
    assert ("happy", r["vectors"][0]["method"], "pref_margin", 2.0, margins[2.0]) in rows
    df = r.to_pandas()
    assert len(df) == len(rows) and set(df["metric"]) >= {"pref_margin", "kl"}
    wide = df[df.metric == "pref_margin"].pivot(index="multiplier", columns="vector", values="value")
    assert wide.loc[2.0, "happy"] == margins[2.0]


def test_evaluate_matches_vectors_in_norm(tmp_path, model, happy):
    test = _csv(tmp_path, "test.csv", "test.csv", 2)
    double = happy * 2.0
    double.meta["name"] = "double"
    r = bipo.evaluate(model, [happy, double], test, [0, 1], match="norm", damage=False, open_ended=0,
                      progress=False)
    a, b = r["vectors"]
    assert a["scale"] == 1.0 and abs(b["scale"] - 0.5) < 1e-6
    assert abs(a["pref_margin"][1]["value"] - b["pref_margin"][1]["value"]) < 1e-3


def test_evaluate_with_the_prompting_baseline_equals_bipo_eval(tmp_path, model, happy):
    test = _csv(tmp_path, "test.csv", "test.csv", 2)
    prompts = {"positive": "Be cheerful.", "negative": "Be gloomy."}
    (tmp_path / "p.toml").write_text('positive = "Be cheerful."\nnegative = "Be gloomy."\n')
    cli_out = tmp_path / "cli"
    subprocess.run([BIN, "-q", "eval", "-m", str(MODEL), "-v", f"{HAPPY}:happy", "--data", str(test),
                    "--multipliers=-1,0,1", "--open-ended", "0", "--no-damage", "--prompts",
                    str(tmp_path / "p.toml"), "--prompted", "-o", str(cli_out)], check=True, capture_output=True)
    ref = json.loads((cli_out / "report.json").read_text())
    happy.meta["name"] = "happy"
    r = bipo.evaluate(model, happy, test, [-1, 0, 1], open_ended=0, damage=False, prompts=prompts,
                      prompted=True, progress=False)
    assert [v["name"] for v in r["vectors"]] == ["happy", "prompting", "happy (prompt+)", "happy (prompt-)"]
    assert [v["pref_margin"] for v in r["vectors"]] == [v["pref_margin"] for v in ref["vectors"]]
    with pytest.raises(bipo.BipoError, match="must include"):
        bipo.evaluate(model, happy, test, [0, 2], prompts=prompts, progress=False)


def test_evaluate_counts_refusals(tmp_path, model, happy):
    test = _csv(tmp_path, "test.csv", "test.csv", 2)
    r = bipo.evaluate(model, happy, test, [0, 1], open_ended=2, max_tokens=3, damage=False,
                      refusal=True, progress=False)
    table = r["open_ended"]["refusal"]["table"]
    assert r["open_ended"]["refusal"]["strings"].startswith("GCG")
    assert all(isinstance(a["refusal"], bool) for a in r.answers) and len(r.answers) == 4
    for a in r.answers:
        assert table[a["vector"]][str(int(a["multiplier"]))]["answers"] == 2
    # Own strings (one per line, trimmed): "the".
    (tmp_path / "r.txt").write_text(" the\n")
    r = bipo.evaluate(model, happy, test, [0], open_ended=2, max_tokens=3, damage=False,
                      refusal_strings=tmp_path / "r.txt", progress=False)
    assert r["open_ended"]["refusal"]["strings"].endswith("r.txt")
    for a in r.answers:
        assert a["refusal"] == ("the" in a["answer"])
    with pytest.raises(bipo.BipoError, match="open-ended"):
        bipo.evaluate(model, happy, test, [0], open_ended=0, refusal=True, progress=False)


def test_evaluate_errors(tmp_path, model, happy):
    test = _csv(tmp_path, "test.csv", "test.csv", 2)
    with pytest.raises(bipo.BipoError, match="multiplier inf"):
        bipo.evaluate(model, happy, test, [0, float("inf")], progress=False)
    with pytest.raises(bipo.BipoError, match="no-such.csv"):
        bipo.evaluate(model, happy, tmp_path / "no-such.csv", progress=False)
    inside = tmp_path / "o" / "report.csv"  # a name the report would take
    inside.parent.mkdir()
    inside.write_text(test.read_text())
    with pytest.raises(bipo.BipoError, match="overwrite"):
        bipo.evaluate(model, happy, inside, out=inside.parent, progress=False)
    with pytest.raises(bipo.BipoError, match="unknown variant `bogus`"):
        bipo.evaluate(model, happy, test, match="bogus", progress=False)
    wide = bipo.SteeringVector.from_numpy({3: np.ones(8, dtype=np.float32)})
    with pytest.raises(bipo.BipoError, match="vectors\\[0\\]"):
        bipo.evaluate(model, wide, test, progress=False)


def test_train_with_a_test_set_reports_held_out_losses_like_the_cli(tmp_path, model):
    train = _csv(tmp_path, "train.csv", "train.csv", 8)
    test = _csv(tmp_path, "held.csv", "test.csv", 4)
    cli = tmp_path / "cli"
    subprocess.run([BIN, "-q", "train", "-m", str(MODEL), "--data", str(train), "--test", str(test), "--layer", "12",
                    "--epochs", "2", "--batch-size", "2", "--seed", "3", "--lr", "0.01", "--warmup-steps", "0",
                    "-o", str(cli)], check=True, capture_output=True)
    seen = []
    r = bipo.train(model, train, test=test, out=tmp_path / "py", layer=12, progress=seen.append, **SETTINGS)
    epochs = [d for d in seen if d["kind"] == "epoch"]
    assert len(epochs) == 2 and all(d["test_loss_plus"] is not None for d in epochs)
    ref = [json.loads(l) for l in (cli / "metrics.jsonl").read_text().splitlines()]
    ref_epochs = [m["metrics"] for m in ref if m["type"] == "epoch"]
    for key in ("train_loss", "test_loss_plus", "test_loss_minus", "test_margin_plus"):
        assert [d[key] for d in epochs] == [m[key] for m in ref_epochs], f"{key} differs from bipo train"
    assert r.vector == bipo.SteeringVector.load(cli / "vector.safetensors")
    assert r.record["test"]["sha256"]


def test_logits_match_logprobs_and_the_invariants(model, happy):
    ids = model.tokenize("The weather today is", chat=False)
    base = model.logits(ids)
    assert base.shape == (len(ids), model.info["vocab_size"] if "vocab_size" in model.info else base.shape[1])
    assert np.array_equal(model.logits(ids, [(happy, 0.0)]), base), "multiplier 0 must be bit-identical"
    steered = model.logits(ids, [(happy, 4.0)])
    assert np.abs(steered - base).max() > 0.1
    np.testing.assert_allclose(model.logits(ids, [(happy * 2.0, 2.0)]), model.logits(ids, [(happy, 4.0)]),
                               rtol=0, atol=1e-4)
    # The log-softmax of the logits is what logprobs reports for a continuation.
    prompt, cont = "The weather today is", " sunny and warm"
    cids, lps = model.logprobs(prompt, cont, [(happy, 4.0)])
    full = model.tokenize(prompt, chat=False) + cids
    lg = model.logits(full, [(happy, 4.0)]).astype(np.float64)
    lsm = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
    n = len(cids)
    mine = [lsm[len(full) - n - 1 + i, t] for i, t in enumerate(cids)]
    np.testing.assert_allclose(mine, lps, atol=1e-4)
    with pytest.raises(bipo.BipoError, match="empty"):
        model.logits([])
    with pytest.raises(bipo.BipoError, match="999999"):
        model.logits([1, 999999])


SIGINT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, bipo
    m = bipo.Model.load(sys.argv[1])
    kind = sys.argv[3]
    def poke(d):
        if kind == "train" and d["kind"] == "step" and d["step"] == 2:
            print("steps", d["total"], flush=True)
            os.kill(os.getpid(), signal.SIGINT)
    try:
        if kind == "train":
            bipo.train(m, sys.argv[2], out=sys.argv[4], layer=12, progress=poke, epochs=4, batch_size=1,
                       seed=3, warmup_steps=0)
        else:
            import threading
            threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            g = m.generate("Tell me a very long story.", max_tokens=100000, chat=True, stop=[])
            print("finished", len(g.ids), flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
""")


def test_ctrl_c_stops_training_with_a_checkpoint_and_stops_generation(tmp_path):
    """A real SIGINT (what Ctrl-C sends), not an exception from a callback: Python only
    runs signal handlers on its main thread, while the work runs on a worker."""
    script = tmp_path / "sigint.py"
    script.write_text(SIGINT_SCRIPT)
    train = _csv(tmp_path, "train.csv", "train.csv", 8)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(script), str(MODEL), str(train), "train", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 3 and "KeyboardInterrupt" in p.stdout, p.stdout + p.stderr
    ck = json.loads((out / "checkpoint.json").read_text())
    total = int(p.stdout.split()[1])
    assert 2 <= ck["step"] < total, f"stopped at step {ck['step']} of {total}"
    p = subprocess.run([sys.executable, str(script), str(MODEL), str(train), "generate"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and "KeyboardInterrupt" in p.stdout, p.stdout + p.stderr


def test_a_tqdm_bar_shows_unless_silenced(tmp_path, model, capsys):
    train = _csv(tmp_path, "train.csv", "train.csv", 4)
    bipo.train(model, train, out=tmp_path / "a", layer=12, epochs=1, batch_size=2, warmup_steps=0)
    err = capsys.readouterr().err
    assert "bipo train" in err and "2/2" in err, err
    bipo.train(model, train, out=tmp_path / "b", layer=12, epochs=1, batch_size=2, warmup_steps=0, progress=False)
    assert capsys.readouterr().err == ""


def test_repeng_control_vectors_convert_both_ways(monkeypatch):
    # repeng 0.4's ControlVector is a dataclass of these two fields.
    fake = types.ModuleType("repeng")

    class ControlVector:
        def __init__(self, model_type, directions):
            self.model_type, self.directions = model_type, directions

    fake.ControlVector = ControlVector
    monkeypatch.setitem(sys.modules, "repeng", fake)
    # The fixture repeng itself exported: directions {3: arange(8)/10, 5: -arange(8)/10}.
    on_disk = bipo.SteeringVector.load(ROOT / "crates/bipo/tests/fixtures/repeng.gguf")
    cv = ControlVector("llama", {3: np.arange(8) / 10, 5: -np.arange(8) / 10})
    v = bipo.SteeringVector.from_repeng(cv)
    assert v == on_disk and list(v.layers) == [3, 5]
    back = v.to_repeng()
    assert isinstance(back, ControlVector) and back.model_type == "llama"
    assert set(back.directions) == {3, 5} and np.array_equal(back.directions[5], v.layers[5])
    with pytest.raises(bipo.BipoError, match="ControlVector"):
        bipo.SteeringVector.from_repeng(object())
    monkeypatch.setitem(sys.modules, "repeng", None)
    with pytest.raises(bipo.BipoError, match="pip install repeng"):
        v.to_repeng()


def test_errors_come_as_subclasses_by_kind(tmp_path, model, happy):
    with pytest.raises(bipo.FileError, match="no-such.gguf"):
        bipo.SteeringVector.load(tmp_path / "no-such.gguf")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(bipo.FileError, match="bad.safetensors"):
        bipo.SteeringVector.load(bad)
    wide = bipo.SteeringVector.from_numpy({3: np.ones(8, dtype=np.float32)})
    with pytest.raises(bipo.InvalidValueError, match="vectors\\[0\\]"):
        model.generate("Hi", [(wide, 1.0)], max_tokens=1)
    with pytest.raises(bipo.InvalidValueError, match="training settings"):
        bipo.train(model, [("q", "a", "b")], out=tmp_path / "r", nope=1)
    with pytest.raises(bipo.InvalidValueError, match="bipo.baseline"):
        bipo.train(model, [("q", "a", "b")], out=tmp_path / "r", method="caa")
    for cls in (bipo.FileError, bipo.InvalidValueError, bipo.ModelError, bipo.JudgeError):
        assert issubclass(cls, bipo.BipoError)
    r = bipo.baseline(model, method="random", like=happy, seed=5)
    assert r == happy.random_like(5)
    with pytest.raises(bipo.InvalidValueError, match="like="):
        bipo.baseline(model, method="random")


def test_lora_adapters_merge_at_load_like_peft():
    fixtures = ROOT / "crates" / "bipo" / "tests" / "fixtures"
    ref = json.loads((fixtures / "lora" / "llama" / "reference.json").read_text())
    base = bipo.Model.load(fixtures / "families" / "llama")
    tuned = bipo.Model.load(fixtures / "families" / "llama", lora=[fixtures / "lora" / "llama"])
    want = np.array(ref["logits"], dtype=np.float32)
    assert np.abs(base.logits(ref["input_ids"]) - want).max() > 1.0
    np.testing.assert_allclose(tuned.logits(ref["input_ids"]), want, rtol=0, atol=1e-4)
    with pytest.raises(bipo.BipoError, match="adapter_config.json"):
        bipo.Model.load(fixtures / "families" / "llama", lora=[fixtures / "nowhere"])
