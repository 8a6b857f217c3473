"""The one objective every request is scored by, every controller aims at and the bound maximises.

Per request, with `quality` the token-weighted expected quality of what the receiver used
(normalized: the uncompressed cache and TEXT are 1.0) and `ttft_s` against the request's SLO:

    utility = quality                                                 if ttft_s <= slo_s
            = late_quality_weight * quality
              - late_penalty_per_slo * (ttft_s - slo_s) / slo_s       otherwise

The default (`late_quality_weight` 0, `late_penalty_per_slo` 0) scores a late request 0: an answer
that comes after its deadline is worth nothing, whatever its quality. A scenario may say otherwise
(`objective:` in the scenario file, docs/decisions.md). Utility is never above 1 and, for any
setting, never higher when the request is later or its quality lower, which is what lets the bound
prune plans exactly.

Ties between plans of equal utility (e.g. two late plans under the default) are broken the same way
everywhere: earlier first token first, then higher quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kvcast.errors import InputError
from kvcast.fields import Checker

# The controller whose utility is the bound every other is measured against (`utility_vs_bound`).
BOUND_CONTROLLER = "oracle"


def display_name(controller: str) -> str:
    """A controller's name as tables and reports show it: the bound says what it is (compared
    runs name controllers `<scenario>/<controller>`)."""
    return (
        f"{controller} (bound)" if controller.rsplit("/", 1)[-1] == BOUND_CONTROLLER else controller
    )


# A first token this close after the deadline still counts as on time (float noise in sums of
# transfer and GPU times); the engine, the controllers and the bound all use this one figure.
ON_TIME_TOLERANCE_S = 1e-9


def on_time(ttft_s: float | np.ndarray, slo_s: float | np.ndarray) -> bool | np.ndarray:
    """Whether a first token at `ttft_s` meets `slo_s` (any two times measured alike, e.g. an
    absolute finish against an absolute deadline); elementwise on arrays."""
    return ttft_s <= slo_s + ON_TIME_TOLERANCE_S


@dataclass(frozen=True)
class Objective:
    """How a request's quality and TTFT against its SLO become one number (module docstring)."""

    late_quality_weight: float = 0.0
    late_penalty_per_slo: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.late_quality_weight <= 1.0):
            raise InputError(
                f"late_quality_weight: expected a number in [0, 1], got {self.late_quality_weight!r}"
            )
        if not (self.late_penalty_per_slo >= 0.0 and np.isfinite(self.late_penalty_per_slo)):
            raise InputError(
                f"late_penalty_per_slo: expected a finite number >= 0, got {self.late_penalty_per_slo!r}"
            )

    @property
    def late_is_worthless(self) -> bool:
        """True when every late request scores exactly 0 (the default)."""
        return self.late_quality_weight == 0.0 and self.late_penalty_per_slo == 0.0

    def utility(self, quality: float, ttft_s: float, slo_s: float) -> float:
        return float(self.utilities(np.array([quality]), np.array([ttft_s]), slo_s)[0])

    def utilities(
        self, quality: np.ndarray, ttft_s: np.ndarray, slo_s: float | np.ndarray
    ) -> np.ndarray:
        """`utility` elementwise (arrays of equal shape; `slo_s` a scalar or the same shape)."""
        quality = np.asarray(quality, dtype=np.float64)
        ttft_s = np.asarray(ttft_s, dtype=np.float64)
        slo = np.asarray(slo_s, dtype=np.float64)
        met = on_time(ttft_s, slo)
        with np.errstate(invalid="ignore"):
            late = (
                self.late_quality_weight * quality
                - self.late_penalty_per_slo * np.maximum(ttft_s - slo, 0.0) / slo
            )
        late = np.where(np.isfinite(late), late, -np.inf if self.late_penalty_per_slo else 0.0)
        return np.where(met, quality, late)

    def describe(self) -> str:
        if self.late_is_worthless:
            return "utility = quality if the first token meets the SLO, else 0"
        parts = [f"{self.late_quality_weight:g} x quality"] if self.late_quality_weight else []
        if self.late_penalty_per_slo:
            parts.append(f"- {self.late_penalty_per_slo:g} x lateness / SLO")
        return "utility = quality if the first token meets the SLO, else " + " ".join(
            parts or ["0"]
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "late_quality_weight": self.late_quality_weight,
            "late_penalty_per_slo": self.late_penalty_per_slo,
        }


def objective_from_dict(raw: Any, where: str = "objective", source: str = "objective") -> Objective:
    """An `Objective` from a scenario's `objective:` mapping (None: the default); errors name
    `source` (the scenario file) and the field."""
    if raw is None:
        return Objective()
    check = Checker(source)
    allowed = ("late_quality_weight", "late_penalty_per_slo")
    check.mapping(raw, where, optional=allowed)
    values = {key: check.number(raw[key], f"{where}.{key}") for key in allowed if key in raw}
    try:
        return Objective(**values)
    except InputError as exc:
        raise check.fail(where, str(exc)) from None
