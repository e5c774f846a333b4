"""The valid range of a number, kept in its type annotation so the signature stays the one source.

    def labeled_text(..., batch_size: PositiveInt = 64, val_fraction: Fraction = 0.1, ...)
    max_steps: Annotated[int, Range(ge=1, special={-1: "no limit"})] = -1

`bigmodel.config.check_targets` (for `_target_` nodes) and the typed schemas (TrainerConfig, ...)
read these annotations and reject an out-of-range value with one line naming the key, the value and
what is valid, before anything is built. Plain `int`/`float` annotations are not range-checked.
`MultipleOf("n_head")` ties an argument to another of the same call (attention widths).
"""

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any


@dataclass(eq=False)
class Range:
    """Bounds of a number: ge/le inclusive, gt/lt exclusive. `special` values lie outside the bounds but
    mean something ({-1: "all"}). A list or tuple value is checked element by element. NaN and
    infinities are never in range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    special: dict[Any, str] = field(default_factory=dict)

    def __contains__(self, value: Any) -> bool:
        if value in self.special:
            return True
        if not math.isfinite(value):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if low and high:
            bounds = f"in {low}, {high}"  # in [0, 1)
        else:
            ops = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            bounds = next((f"{op} {v:g}" for op, v in ops if v is not None), "any finite number")
        return " or ".join([*(f"{v} ({why})" for v, why in self.special.items()), bounds])


@dataclass(frozen=True)
class MultipleOf:
    """An int that must be a multiple of another argument of the same call:
    `n_embd: Annotated[int, Range(ge=1), MultipleOf("n_head")]`."""

    other: str


PositiveInt = Annotated[int, Range(ge=1)]  # sizes, counts, intervals
NonNegativeInt = Annotated[int, Range(ge=0)]  # 0 usually switches the thing off
PositiveFloat = Annotated[float, Range(gt=0)]  # learning rates, scales
NonNegativeFloat = Annotated[float, Range(ge=0)]  # weight decay, clipping norms, tolerances
Fraction = Annotated[float, Range(ge=0, lt=1)]  # dropout probabilities, held-out shares of a split
Probability = Annotated[float, Range(ge=0, le=1)]


def range_of(hint: Any) -> Range | None:
    """The Range in an annotation: `Annotated[int, Range(...)]`, also inside `X | None` or `list[X]`."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    return next((r for a in typing.get_args(hint) if (r := range_of(a)) is not None), None)


def not_a_multiple(hints: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> str | None:
    """A one-line message for the first `MultipleOf` annotation in `hints` that `values` break."""
    for name, hint in hints.items():
        for rule in getattr(hint, "__metadata__", ()):
            v, d = values.get(name), values.get(str(getattr(rule, "other", "")))
            if isinstance(rule, MultipleOf) and isinstance(v, int) and isinstance(d, int) and d > 0 and v % d:
                return f"{prefix}{name}={v} must be a multiple of {prefix}{rule.other}={d}"
    return None


def out_of_range(key: str, value: Any, hint: Any) -> str | None:
    """A one-line message when `value` (a number, or a list of them) is outside the range in `hint`."""
    rng = range_of(hint)
    values = value if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if rng is None or all(v in rng for v in numbers):
        return None
    each = "each value " if isinstance(value, (list, tuple)) else ""
    finite = "" if all(math.isfinite(v) for v in numbers) else "a finite number, "
    return f"{key}={value!r} is out of range; valid: {each}{finite}{rng}"


def check_fields(schema: type, values: Mapping[str, Any], prefix: str) -> str | None:
    """The first out-of-range field of `values` against the annotations of the dataclass `schema`."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for name, value in values.items():
        if name in hints and (msg := out_of_range(f"{prefix}{name}", value, hints[name])):
            return msg
    return None
