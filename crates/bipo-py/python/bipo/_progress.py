"""Progress for long calls: the caller's callback, else a tqdm bar when tqdm is
installed, else nothing (``progress=False`` silences the bar)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

Report = Optional[Callable[[dict], None]]


@contextlib.contextmanager
def _reporter(progress, make: Callable[[object], Callable[[dict], None]], **bar_args) -> Iterator[Report]:
    """``progress`` itself when it is a callback, None when False (or tqdm is missing),
    else ``make(bar)`` over a new tqdm bar that is closed afterwards."""
    if progress is False:
        yield None
        return
    if progress is not None:
        yield progress
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(dynamic_ncols=True, **bar_args)
    try:
        yield make(bar)
    finally:
        bar.close()


def for_training(progress):
    """A ``progress(dict)`` for ``bipo.train``: steps advance the bar, epochs with a
    test set print their held-out losses under it."""

    def make(bar):
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
                          f"{d['test_loss_plus']:.4f} -v {d['test_loss_minus']:.4f}, test reward margin +v "
                          f"{d['test_margin_plus']:+.4f}")

        return report

    return _reporter(progress, make, desc="bipo train", unit="step")


def for_stages(progress):
    """A ``progress(dict)`` for calls that go through named stages (``stage``,
    ``done``, ``total``): one bar, reset at every new stage."""

    def make(bar):
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

        return report

    return _reporter(progress, make, desc="bipo")
