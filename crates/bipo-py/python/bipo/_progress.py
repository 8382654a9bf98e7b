"""Progress for long calls: the caller's callback, else a tqdm bar when tqdm is
installed, else nothing (``progress=False`` silences the bar)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

Report = Optional[Callable[[dict], None]]


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


@contextlib.contextmanager
def for_training(progress) -> Iterator[Report]:
    """A ``progress(dict)`` for ``bipo.train``: steps advance the bar, epochs with a
    test set print their held-out losses under it."""
    tqdm = _tqdm() if progress is None else None
    if progress is False or (progress is None and tqdm is None):
        yield None
        return
    if progress is not None:
        yield progress
        return
    bar = tqdm(desc="bipo train", unit="step", dynamic_ncols=True)

    def report(d: dict) -> None:
        if bar.total != d["total"]:
            bar.total = d["total"]
        if d["kind"] == "step":
            bar.n = d["step"]
            bar.set_postfix(epoch=d["epoch"], loss=f"{d['loss']:.4f}", acc=f"{d['accuracy']:.2f}",
                            norm=f"{d['vector_norm']:.3f}", refresh=False)
            bar.refresh()
        elif d.get("test_loss_plus") is not None:
            bar.write(f"epoch {d['epoch']}: train loss {d['train_loss']:.4f}, test loss +v "
                      f"{d['test_loss_plus']:.4f} -v {d['test_loss_minus']:.4f}, test margin +v "
                      f"{d['test_margin_plus']:+.4f}")

    try:
        yield report
    finally:
        bar.close()


@contextlib.contextmanager
def for_stages(progress) -> Iterator[Report]:
    """A ``progress(dict)`` for calls that go through named stages (``stage``,
    ``done``, ``total``): one bar, reset at every new stage."""
    tqdm = _tqdm() if progress is None else None
    if progress is False or (progress is None and tqdm is None):
        yield None
        return
    if progress is not None:
        yield progress
        return
    bar = tqdm(desc="bipo", dynamic_ncols=True)
    stage = [None]

    def report(d: dict) -> None:
        if d["stage"] != stage[0]:
            stage[0] = d["stage"]
            bar.reset(total=d["total"])
            bar.set_description(d["stage"], refresh=False)
        if bar.total != d["total"]:
            bar.total = d["total"]
        bar.n = d["done"]
        bar.refresh()

    try:
        yield report
    finally:
        bar.close()
