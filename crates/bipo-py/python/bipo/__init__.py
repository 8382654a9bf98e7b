"""bipo: steering vectors for language models (BiPO), on a Rust core.

    import bipo
    m = bipo.Model.load("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    v = bipo.SteeringVector.load("assets/happy-control-vector.gguf")
    print(m.generate("How was your day?", vectors=[(v, 4.0)], max_tokens=40))

A steering vector holds one float32 direction per layer; layer L is added to the
output of 0-based decoder block L (Hugging Face ``hidden_states[L+1]``, llama.cpp
``direction.L``). Model calls release the GIL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _bipo, _progress
from ._bipo import BipoError, FileError, InvalidValueError, JudgeError, ModelError

__all__ = ["BipoError", "FileError", "InvalidValueError", "JudgeError", "ModelError", "Generation", "Model", "Report", "SteeringVector", "TrainResult", "baseline",
           "evaluate", "set_threads", "train", "__version__"]
__version__ = _bipo.__version__

PathLike = Union[str, "os.PathLike[str]"]


def set_threads(n: int) -> None:
    """Worker threads for model calls (default: all cores); before the first model call."""
    _bipo.set_threads(int(n))


class SteeringVector:
    """One float32 direction per layer (``layers``: ``{layer: numpy.ndarray}``) plus
    metadata (``meta``: name, model, method, extra)."""

    __slots__ = ("layers", "meta")

    def __init__(self, layers: Mapping[int, np.ndarray], meta: Optional[dict] = None):
        out: Dict[int, np.ndarray] = {}
        width = None
        for layer, d in layers.items():
            if int(layer) < 0:
                raise BipoError(f"layer {layer}: must be >= 0")
            a = np.ascontiguousarray(np.asarray(d, dtype=np.float32))
            if a.ndim != 1 or a.size == 0:
                raise BipoError(f"layer {layer}: expected a non-empty 1-D array, got shape {a.shape}")
            if not np.all(np.isfinite(a)):
                raise BipoError(f"layer {layer}: holds NaN or infinite values")
            if width is not None and a.size != width:
                raise BipoError(f"layer {layer}: width {a.size}, other layers have {width}")
            width = a.size
            out[int(layer)] = a
        if not out:
            raise BipoError("a steering vector needs at least one layer")
        self.layers = dict(sorted(out.items()))
        self.meta = {"name": "", "model": None, "method": None, "extra": {}}
        if meta:
            self.meta.update(meta)

    @classmethod
    def from_numpy(cls, layers: Mapping[int, np.ndarray], name: str = "", method: Optional[str] = None) -> "SteeringVector":
        return cls(layers, {"name": name, "method": method})

    @classmethod
    def load(cls, path: PathLike, layer: Optional[int] = None) -> "SteeringVector":
        """Reads safetensors (bipo's), a llama.cpp control-vector GGUF, or the BiPO
        paper's ``.pt`` (then ``layer`` names its layer)."""
        raw, meta = _bipo.read_vector(os.fspath(path), layer)
        return cls({l: np.frombuffer(b, dtype="<f4").copy() for l, b in raw.items()}, json.loads(meta))

    def save(self, path: PathLike) -> None:
        """Writes ``.safetensors`` or ``.gguf`` (llama.cpp control vector) by extension,
        atomically (temp file + rename)."""
        _bipo.write_vector(self._raw(), json.dumps(self.meta), os.fspath(path))

    def _raw(self) -> Dict[int, bytes]:
        return {l: a.astype("<f4", copy=False).tobytes() for l, a in self.layers.items()}

    @property
    def hidden_size(self) -> int:
        return next(iter(self.layers.values())).size

    def random_like(self, seed: int = 0) -> "SteeringVector":
        """A seeded random direction per layer with this vector's norms (a control)."""
        layers, meta = _bipo.random_like(self._raw(), int(seed))
        return SteeringVector._from_raw(layers, meta)

    @classmethod
    def _from_raw(cls, layers: Dict[int, bytes], meta: str) -> "SteeringVector":
        return cls({l: np.frombuffer(b, dtype="<f4").copy() for l, b in layers.items()}, json.loads(meta))

    def norms(self) -> Dict[int, float]:
        return {l: float(np.linalg.norm(a)) for l, a in self.layers.items()}

    def normalize(self, norm: float = 1.0) -> "SteeringVector":
        """Every layer rescaled to L2 norm ``norm`` (zero layers stay zero)."""
        out = {}
        for l, a in self.layers.items():
            n = float(np.linalg.norm(a))
            out[l] = a * (norm / n) if n > 0 else a.copy()
        return SteeringVector(out, dict(self.meta))

    def _combine(self, other: "SteeringVector", sign: float) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise BipoError(f"widths differ: {self.hidden_size} and {other.hidden_size}")
        out = {l: a.copy() for l, a in self.layers.items()}
        for l, a in other.layers.items():
            out[l] = out[l] + sign * a if l in out else sign * a
        return SteeringVector(out, {"name": f"{self.meta.get('name', '')}{'+' if sign > 0 else '-'}{other.meta.get('name', '')}", "method": "combined"})

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __mul__(self, k):
        if not isinstance(k, (int, float, np.floating, np.integer)):
            return NotImplemented
        return SteeringVector({l: a * np.float32(k) for l, a in self.layers.items()}, dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __eq__(self, other):
        return (isinstance(other, SteeringVector) and self.layers.keys() == other.layers.keys()
                and all(np.array_equal(a, other.layers[l]) for l, a in self.layers.items()))

    def __repr__(self):
        ls = list(self.layers)
        span = f"{ls[0]}" if len(ls) == 1 else f"{len(ls)} layers {ls[0]}..{ls[-1]}"
        return f"SteeringVector({self.meta.get('name') or '?'}: {span}, width {self.hidden_size})"

    def to_repeng(self, model_type: Optional[str] = None):
        """This vector as a repeng ``ControlVector`` (needs ``pip install repeng``).
        repeng keys ``directions`` by the decoder layer whose output it steers, as bipo
        does, so the layers carry over unchanged. ``model_type`` defaults to "llama"
        (what repeng writes into GGUF files for llama-like models)."""
        try:
            from repeng import ControlVector
        except ImportError as e:
            raise BipoError("to_repeng needs the repeng package (pip install repeng)") from e
        return ControlVector(model_type=model_type or "llama",
                             directions={l: a.copy() for l, a in self.layers.items()})

    @classmethod
    def from_repeng(cls, control_vector, name: str = "repeng") -> "SteeringVector":
        """A bipo vector from a repeng ``ControlVector`` (or anything with a
        ``directions`` dict of layer -> array), layers unchanged."""
        directions = getattr(control_vector, "directions", None)
        if not isinstance(directions, Mapping):
            raise BipoError("from_repeng: expected a repeng ControlVector (an object with a `directions` dict)")
        layers = {}
        for l, a in directions.items():
            a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float32)
            layers[int(l)] = a.reshape(-1)
        meta = {"name": name, "method": "repeng",
                "extra": {"repeng_model_type": str(getattr(control_vector, "model_type", ""))}}
        return cls(layers, meta)


@dataclass
class Generation:
    """A generated continuation; ``str(g)`` is its text."""

    text: str
    ids: List[int]
    finish_reason: str
    prompt_tokens: int

    def __str__(self) -> str:
        return self.text


Vectors = Optional[Sequence[Union[SteeringVector, Tuple[SteeringVector, float]]]]


def _vectors(vectors: Vectors) -> List[Tuple[Dict[int, bytes], float]]:
    out = []
    for i, v in enumerate(vectors or []):
        vec, m = (v, 1.0) if isinstance(v, SteeringVector) else v
        if not isinstance(vec, SteeringVector):
            raise BipoError(f"vectors[{i}]: expected a SteeringVector or (SteeringVector, multiplier)")
        out.append((vec._raw(), float(m)))
    return out


class Model:
    """A loaded model (GGUF file, Hugging Face folder, or Hub id in the local cache)."""

    def __init__(self, native, path: str):
        self._m = native
        self.path = path
        self.info = json.loads(native.info())

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu", threads: Optional[int] = None,
             lora: Optional[Sequence[PathLike]] = None) -> "Model":
        """`lora`: PEFT LoRA adapter folders merged into the weights at load, in order."""
        if threads is not None:
            set_threads(threads)
        p = os.fspath(path)
        adapters = [os.fspath(a) for a in (lora or [])]
        return cls(_bipo.NativeModel(p, device, adapters), p)

    @property
    def num_layers(self) -> int:
        return self.info["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self.info["hidden_size"]

    def tokenize(self, prompt: str, chat: bool = True, system: Optional[str] = None) -> List[int]:
        return self._m.tokenize(prompt, chat, system)

    def generate(self, prompt: str, vectors: Vectors = None, *, chat: bool = True,
                 system: Optional[str] = None, max_tokens: int = 128, temperature: float = 0.0,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, seed: int = 0,
                 positions: str = "all", stop: Iterable[str] = ()) -> Generation:
        """Generates a continuation of ``prompt`` (the user message when ``chat``),
        steered by ``vectors`` (vectors or (vector, multiplier) pairs, which add up) at
        ``positions`` ("all", "prompt" or "generated"). Greedy at temperature 0."""
        text, ids, finish, n = self._m.generate(prompt, _vectors(vectors), chat, system, int(max_tokens),
                                                float(temperature), top_p, top_k, int(seed), positions,
                                                list(stop))
        return Generation(text, ids, finish, n)

    def logprobs(self, prompt: str, continuation: str, vectors: Vectors = None, *,
                 chat: bool = False) -> Tuple[List[int], np.ndarray]:
        """Token ids of ``continuation`` and the log-probability of each after
        ``prompt``, steered at every position."""
        ids, lps = self._m.logprobs(prompt, continuation, _vectors(vectors), chat)
        return ids, np.asarray(lps, dtype=np.float32)

    def logits(self, ids: Sequence[int], vectors: Vectors = None) -> np.ndarray:
        """Logits (``[len(ids), vocab]`` float32) of the token sequence ``ids`` exactly
        as given (no template, no BOS added), steered at every position."""
        n, vocab, raw = self._m.logits([int(i) for i in ids], _vectors(vectors))
        return np.frombuffer(raw, dtype="<f4").reshape(n, vocab).copy()

    def __repr__(self):
        i = self.info
        return f"Model({i['family']}, {i['num_layers']} layers, width {i['hidden_size']}, {i['weights']})"


@dataclass
class TrainResult:
    """A finished (or resumed-to-the-end) BiPO run: the vector, the steps taken, the run
    folder (run.json, metrics.jsonl, checkpoint.json, vector.safetensors) and its record."""

    vector: SteeringVector
    steps: int
    out: str
    record: dict


def _pairs(data) -> Union[str, List[Tuple[str, str, str]]]:
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if hasattr(data, "to_dict"):  # a pandas DataFrame
        data = data.to_dict("records")
    rows = []
    for i, r in enumerate(data):
        if isinstance(r, Mapping):
            try:
                rows.append((str(r["question"]), str(r["matching"]), str(r["not_matching"])))
            except KeyError as e:
                raise BipoError(f"data: pair {i} has no {e.args[0]!r} (keys: question, matching, not_matching)") from None
        else:
            q, m, n = r
            rows.append((str(q), str(m), str(n)))
    return rows


def train(model: Model, data, *, out: PathLike, layer: Union[int, Sequence[int], None] = None, method: str = "bipo", test=None,
          resume: bool = False, force: bool = False, progress=None, skip_invalid: bool = False,
          **settings) -> TrainResult:
    """Trains a BiPO (``method="bipo"``) or RePS (``"reps"``) steering vector, exactly as
    ``bipo train``. ``layer``: one block, or several trained jointly (BiPO only).

    ``data``: a pairs file (CSV, JSON, JSONL in any format ``bipo train`` reads), a list
    of ``{question, matching, not_matching}`` dicts or tuples, or a pandas DataFrame
    with those columns. ``test``: held-out pairs in the same forms, measured after every
    epoch (the run's metrics.jsonl and the ``progress`` reports). ``out``: the run folder
    (an existing run is refused unless ``force``; ``resume=True`` continues from its
    checkpoint). ``settings``: any ``bipo train`` setting by its config name (epochs,
    lr, beta, batch_size, seed, max_steps, positions, ...). ``progress(dict)`` is called
    after every step (``kind`` "step": step, total, epoch, loss, accuracy, vector_norm,
    lr) and epoch (``kind`` "epoch": train_loss and the test losses); without it a tqdm
    bar shows when tqdm is installed (``progress=False``: nothing). Ctrl-C (or an
    exception from ``progress``) stops after the current step with a checkpoint
    written, then raises.
    """
    if method not in ("bipo", "reps"):
        raise InvalidValueError(f"method {method!r}: train optimises BiPO (method=\"bipo\") or RePS "
                                f"(\"reps\") vectors; CAA, PCA, mean-centring and random vectors come "
                                f"from bipo.baseline")
    cfg = dict(settings)
    cfg["method"] = method
    if isinstance(layer, (list, tuple)):
        ls = sorted({int(x) for x in layer})
        cfg["layer"] = ls[0]
        if len(ls) > 1:
            cfg["layers"] = ls
    elif layer is not None:
        cfg["layer"] = int(layer)
    test_pairs = None if test is None else _pairs(test)
    with _progress.for_training(progress) as report:
        layers, meta, steps = _bipo.train(model._m, _pairs(data), os.fspath(out), json.dumps(cfg), resume, force,
                                          report, skip_invalid, test_pairs)
    vec = SteeringVector({l: np.frombuffer(b, dtype="<f4").copy() for l, b in layers.items()}, json.loads(meta))
    with open(os.path.join(os.fspath(out), "run.json")) as f:
        record = json.load(f)
    return TrainResult(vec, steps, os.fspath(out), record)


def baseline(model: Model, data: Optional[PathLike] = None, method: str = "caa", *,
             layers: Union[int, Sequence[int], None] = None, read_at: str = "mean", system: Optional[str] = None,
             template: Optional[str] = None, skip_invalid: bool = False, like: Optional[SteeringVector] = None,
             seed: int = 0) -> SteeringVector:
    """A baseline vector from a pairs file, as ``bipo baseline``: ``"caa"`` (mean
    difference matching - opposite), ``"pca"`` (first principal component of the
    differences) or ``"mean-centring"``, at ``layers``. ``read_at``: ``"mean"`` over the
    response tokens or ``"last"`` (A/B files always read at the answer letter).
    ``"random"`` is the control: a seeded random direction per layer of ``like`` with its
    norms (the same as ``like.random_like(seed)``; no data needed)."""
    if method == "random":
        if not isinstance(like, SteeringVector):
            raise InvalidValueError("baseline \"random\": give like=SteeringVector (its layers and norms)")
        return like.random_like(seed)
    if data is None or layers is None:
        raise InvalidValueError(f"baseline {method!r}: give data (a pairs file) and layers")
    ls = [int(layers)] if isinstance(layers, (int, np.integer)) else [int(l) for l in layers]
    raw, meta = _bipo.baseline(model._m, os.fspath(data), method, ls, read_at, system, template, skip_invalid)
    return SteeringVector._from_raw(raw, meta)


from ._eval import Report, evaluate  # noqa: E402  (needs the classes above)
