"""Sparsity specifications and the choice of which block linears are pruned.

Conventions (see docs/architecture.md):

* An unstructured spec carries ``ratio`` = the fraction of weights **removed** (0 < ratio < 1).
* An ``N:M`` spec means **N kept in every group of M** consecutive input columns of each output row
  (so "2:4" removes 2 of every 4, "4:8" removes 4 of every 8, "1:4" keeps 1 and removes 3).

Note the convention difference with the OPTIMA reference code (and Wanda/SparseGPT's ``prune_n``),
which read "n:m" as n **pruned** of m. For 2:4 and 4:8 both readings coincide; for 1:4 or 3:4 they
do not: our "1:4" is their "3:4".
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Collection, Iterable, Sequence

from optima_jax.errors import OptimaError


class SparsitySpecError(OptimaError):
    """A malformed or impossible sparsity specification."""


SCOPES = ("all", "mlp")  # prune_scope values: every block linear, or the family's MLP linears only

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
    """A hashable (jit-static) sparsity pattern.

    kind: "unstructured" (uses ``ratio``) or "nm" (uses ``n`` kept of every ``m``; ``ratio`` = 1 - n/m).
    """

    kind: str
    ratio: float
    n: int = 0
    m: int = 0

    def __post_init__(self):
        if self.kind == "unstructured":
            if not (isinstance(self.ratio, (int, float)) and 0.0 < float(self.ratio) < 1.0):
                raise SparsitySpecError(f"sparsity ratio must be in (0, 1) (fraction removed), got {self.ratio!r}")
        elif self.kind == "nm":
            if not (isinstance(self.n, int) and isinstance(self.m, int)):
                raise SparsitySpecError(f"N:M sparsity needs integer N and M, got {self.n!r}:{self.m!r}")
            if self.n < 1 or self.n >= self.m:
                raise SparsitySpecError(f"N:M sparsity needs 1 <= N < M (N kept of every M), got {self.n}:{self.m}")
        else:
            raise SparsitySpecError(f"unknown sparsity kind {self.kind!r}; expected 'unstructured' or 'nm'")

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def unstructured(cls, ratio: float) -> "SparsitySpec":
        return cls(kind="unstructured", ratio=float(ratio))

    @classmethod
    def nm(cls, n: int, m: int) -> "SparsitySpec":
        if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
            raise SparsitySpecError(f"N:M sparsity needs integer N and M, got {n!r}:{m!r}")
        if n < 1 or n >= m:
            raise SparsitySpecError(f"N:M sparsity needs 1 <= N < M (N kept of every M), got {n}:{m}")
        return cls(kind="nm", ratio=1.0 - n / m, n=n, m=m)

    @classmethod
    def parse(cls, x) -> "SparsitySpec":
        """Parse 0.5, "0.5", "50%", "2:4" (N kept of M) or an existing spec."""
        if isinstance(x, SparsitySpec):
            return x
        if isinstance(x, bool):
            raise SparsitySpecError(
                f"cannot parse sparsity {x!r}; expected a ratio like 0.5, '50%' or 'N:M' like '2:4'"
            )
        if isinstance(x, (int, float)):
            if not math.isfinite(float(x)):
                raise SparsitySpecError(f"sparsity ratio must be in (0, 1), got {x!r}")
            return cls.unstructured(float(x))
        if not isinstance(x, str):
            raise SparsitySpecError(
                f"cannot parse sparsity of type {type(x).__name__}; expected a ratio like 0.5, '50%' or 'N:M' like '2:4'"
            )
        s = x.strip()
        mt = _NM_RE.match(s)
        if mt:
            return cls.nm(int(mt.group(1)), int(mt.group(2)))
        try:
            if s.endswith("%"):
                val = float(s[:-1].strip()) / 100.0
            else:
                val = float(s)
        except ValueError:
            raise SparsitySpecError(
                f"cannot parse sparsity {x!r}; expected a ratio like 0.5, '50%' or 'N:M' like '2:4'"
            ) from None
        if not math.isfinite(val):
            raise SparsitySpecError(f"sparsity ratio must be in (0, 1), got {x!r}")
        return cls.unstructured(val)

    # -- queries ----------------------------------------------------------------------------------
    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    @property
    def prune_per_group(self) -> int:
        """Entries removed in each group of M (N:M only)."""
        return self.m - self.n

    def validate_for(self, in_features: int, where: str = "layer") -> None:
        """Raise if this spec cannot be applied to a linear with ``in_features`` inputs (``where`` names it)."""
        if in_features < 1:
            raise SparsitySpecError(f"{where}: in_features must be positive, got {in_features}")
        if self.kind == "nm" and in_features % self.m != 0:
            raise SparsitySpecError(
                f"{where}: in_features={in_features} is not divisible by M={self.m} of {self.n}:{self.m} sparsity"
            )

    def expected_pruned_per_row(self, in_features: int) -> int:
        """Number of weights removed in each output row: floor(in*ratio), or (M-N)*in/M for N:M."""
        if self.kind == "nm":
            self.validate_for(in_features)
            return (in_features // self.m) * (self.m - self.n)
        return int(in_features * self.ratio)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else f"{self.ratio:g}"


def select_linears(names: Iterable[str], scope: str, mlp: Collection[str]) -> list[str]:
    """The block linears `names` (suffixes like ``mlp.up_proj``) that `scope` prunes: "all" = every one, "mlp" =
    those in `mlp`, the model family's MLP linears (``models.api.mlp_linears(config)``; attention is skipped).
    Embeddings and lm_head are not block linears and must not be passed here.
    """
    names = list(names)
    if scope not in SCOPES:
        raise SparsitySpecError(f"unknown linear scope {scope!r}; expected one of {SCOPES}")
    if scope == "all":
        return names
    return [n for n in names if n in set(mlp)]


def parse_specs(values: Sequence) -> list[SparsitySpec]:
    """Parse a list of sparsity values (convenience for configs)."""
    return [SparsitySpec.parse(v) for v in values]
