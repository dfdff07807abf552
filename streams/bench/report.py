"""What every benchmark does with its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` (if given) and return it."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
