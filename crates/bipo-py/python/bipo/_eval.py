"""``bipo.evaluate``: the evaluation ``bipo eval`` runs, returning the report."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _bipo, _progress
from ._bipo import BipoError

PathLike = Union[str, "os.PathLike[str]"]

# Per-multiplier metrics of a vector's report: (key, what it measures).
METRICS = (
    ("ab_probability", "A/B: probability of the matching answer"),
    ("ab_letter_a", "A/B: probability of the letter A"),
    ("pref_margin", "held-out pairs: mean log-prob margin matching - opposite"),
    ("pref_margin_per_token", "held-out pairs: the margin with each response's log-prob per token"),
    ("pref_accuracy", "held-out pairs: fraction with a positive margin"),
    ("kl", "damage: KL(unsteered || steered) per token on neutral text"),
    ("perplexity", "damage: perplexity on neutral text"),
)


class Report(dict):
    """The evaluation report (the dict ``report.json`` holds: ``vectors``, each with
    per-multiplier ``ab_probability``, ``pref_margin``, ``kl``, ..., steerability and
    norms), plus ``answers`` (the open-ended answers, and judge scores when judged) and
    ``markdown`` (the tables of ``report.md``)."""

    answers: List[Dict[str, Any]]
    markdown: str

    def to_pandas(self):
        """One row per vector, metric and multiplier (columns vector, method, metric,
        multiplier, value): ready for ``pivot`` or seaborn. Needs pandas."""
        try:
            import pandas as pd
        except ImportError as e:
            raise BipoError("Report.to_pandas needs pandas (pip install pandas)") from e
        return pd.DataFrame(self.rows(), columns=["vector", "method", "metric", "multiplier", "value"])

    def rows(self) -> List[tuple]:
        """The table of :meth:`to_pandas` as (vector, method, metric, multiplier, value)
        tuples, without pandas."""
        out = []
        for v in self["vectors"]:
            for key, _ in METRICS:
                for p in v.get(key) or []:
                    out.append((v["name"], v.get("method"), key, p["multiplier"], p["value"]))
        return out

    def __repr__(self):
        names = ", ".join(v["name"] for v in self["vectors"])
        return f"Report({self['title']!r}: {names} at multipliers {self['multipliers']})"


def evaluate(model, vectors, data: Union[PathLike, Sequence[PathLike]], multipliers: Optional[Sequence[float]] = None,
             *, out: Optional[PathLike] = None, positions: str = "all", open_ended: int = 4, max_tokens: int = 48,
             damage: bool = True, match: str = "none", neutral: Optional[PathLike] = None,
             batch: Optional[int] = None,
             limit: Optional[int] = None, system: Optional[str] = None, template: Optional[str] = None,
             judge_url: Optional[str] = None, judge_model: str = "gpt-4o-mini", judge_key: Optional[str] = None,
             behaviour: str = "the target behaviour", title: str = "bipo eval",
             prompts: Optional[Dict[str, str]] = None, prompted: bool = False,
             refusal: bool = False, refusal_strings: Optional[PathLike] = None, progress=None) -> Report:
    """Measures steering vectors as ``bipo eval`` does and returns the :class:`Report`.

    ``vectors``: a SteeringVector or a list of them (told apart by ``meta["name"]``).
    ``data``: test files (A/B questions and/or free-text pairs, detected by content).
    ``multipliers``: default -2, -1, -0.5, 0, 0.5, 1, 2. Measured: the A/B probability of
    the matching answer, held-out preference margins and accuracy, per-sample
    steerability, damage (KL and perplexity on neutral text; ``damage=False`` skips it),
    with every vector first rescaled to the first one's norm (``match="norm"``) or damage
    at multiplier 1 (``match="kl"``) when asked (its ``scale`` is in the report),
    and greedy answers to ``open_ended`` questions, scored by the judge at ``judge_url``
    when given (an OpenAI-compatible server, e.g. ``bipo serve``). With ``out`` the
    report, plots and answers are also written there. ``progress(dict)`` gets stage,
    done and total (default: a tqdm bar when tqdm is installed; False: none). Ctrl-C
    stops the evaluation and raises KeyboardInterrupt. ``data`` may also hold
    multiple-choice JSONL files (``{"question", "correct", "incorrect"}`` per line:
    TruthfulQA's MC1/MC2). ``prompts={"positive": ..., "negative": ..., "mode":
    "system"|"prefix"|"suffix"}`` adds the prompting baseline (row ``prompting`` at
    -1/0/+1; the multipliers must include them) and ``prompted=True`` every vector on top
    of each instruction. ``refusal=True`` marks each open-ended answer that contains a
    refusal string (GCG's list, or one per line of ``refusal_strings``) and reports the
    attack success rate per vector and multiplier (``report["open_ended"]["refusal"]``).
    """
    from . import SteeringVector

    vs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    for i, v in enumerate(vs):
        if not isinstance(v, SteeringVector):
            raise BipoError(f"vectors[{i}]: expected a SteeringVector")
    files = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    cfg: Dict[str, Any] = {
        "data": [os.fspath(f) for f in files],
        "positions": positions,
        "open_ended": int(open_ended),
        "max_tokens": int(max_tokens),
        "damage": bool(damage),
        "match": match,
        "neutral": None if neutral is None else os.fspath(neutral),
        "limit": limit,
        "system": system,
        "template": template,
        "title": title,
    }
    if multipliers is not None:
        cfg["multipliers"] = [float(m) for m in multipliers]
        for m in cfg["multipliers"]:
            if not math.isfinite(m):  # JSON has no infinity: refused here
                raise BipoError(f"invalid multiplier {m}: must be finite")
    if batch is not None:
        cfg["batch"] = int(batch)
    if prompts is not None:
        cfg["prompts"] = dict(prompts)
    cfg["prompted"] = bool(prompted)
    cfg["refusal"] = bool(refusal) or refusal_strings is not None
    if refusal_strings is not None:
        cfg["refusal_strings"] = os.fspath(refusal_strings)
    if judge_url is not None:
        cfg["judge"] = {"url": judge_url, "model": judge_model, "behaviour": behaviour}
    raw = [(v._raw(), json.dumps(v.meta)) for v in vs]
    with _progress.for_stages(progress) as report:
        rep, answers, md = _bipo.evaluate(model._m, raw, json.dumps(cfg), None if out is None else os.fspath(out),
                                          judge_key, report)
    r = Report(json.loads(rep))
    r.answers = json.loads(answers)
    r.markdown = md
    return r
