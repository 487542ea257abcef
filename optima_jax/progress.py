"""Progress bars for every stage that can take more than a few seconds (one style, one switch).

`bar(iterable, desc=..., total=..., unit=...)` is tqdm on stderr with rate and ETA; `steps(desc, names)` is a
bar over the named steps of a stage with no natural unit (a checkpoint save, an export). TQDM_DISABLE=1 (tqdm's
own variable) turns every bar off; `enabled=False` turns one off (e.g. on non-main processes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | float | None = None,
    unit: str = "it",
    enabled: bool = True,
    unit_scale: bool = False,
    leave: bool = False,
):
    """tqdm over `iterable` (or a manual bar when None: call .update(n)), with ETA."""
    from tqdm.auto import tqdm

    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    # shown on non-terminals too (a nohup log, a CI console): a long stage is never silent
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=unit_scale,
        leave=leave,
        disable=off,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )


class steps:
    """`with steps("saving checkpoint", ["params", "masks", "metadata"]) as s: ...; s.done("params")` — one tick
    per named step, the current step shown as the bar's postfix."""

    def __init__(self, desc: str, names: list[str], enabled: bool = True):
        self._bar = bar(desc=desc, total=len(names), unit="step", enabled=enabled)
        self._names = list(names)
        if self._names:
            self._bar.set_postfix_str(self._names[0], refresh=False)

    def done(self, name: str) -> None:
        self._bar.update(1)
        i = self._names.index(name) + 1 if name in self._names else None
        if i is not None and i < len(self._names):
            self._bar.set_postfix_str(self._names[i], refresh=False)

    def __enter__(self) -> "steps":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
