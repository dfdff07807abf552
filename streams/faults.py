"""Fault injection for tests: make a named step fail once, as a transient error or as a crash.

Off unless the environment variable ``CRM_ERP_SYNC_FAULTS`` names steps (tests set it on a worker
they start), e.g. ``normalize.send=transient,apply.write=crash``: each named step raises once, the
first time it runs. ``transient`` raises :class:`TransientError` (the batch is retried in the
process); ``crash`` raises ``RuntimeError`` (the worker ends without acknowledging the batch, and is
started again). ``CRM_ERP_SYNC_CLOCK_SKEW_S`` shifts the worker's own clock (what it stamps on the
states it decides) by that many seconds, as a machine whose clock is off would. Read once at
import; production never sets either.
"""

from __future__ import annotations

import os
import time

from streams.errors import TransientError

ENV = "CRM_ERP_SYNC_FAULTS"
SKEW_ENV = "CRM_ERP_SYNC_CLOCK_SKEW_S"
STEPS = ("normalize.send", "reconcile.commit", "apply.write", "documents.step", "audit.move")


def _plan(text: str) -> dict[str, str]:
    plan: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step, _, kind = item.partition("=")
        if step not in STEPS or kind not in ("transient", "crash"):
            raise ValueError(f"{ENV}: {item!r} is not <step>=transient|crash with a step of {', '.join(STEPS)}")
        plan[step] = kind
    return plan


_PENDING = _plan(os.environ.get(ENV, ""))
_SKEW_S = float(os.environ.get(SKEW_ENV) or 0)


def point(step: str) -> None:
    """Fail here once if the plan names ``step``."""
    kind = _PENDING.pop(step, None)
    if kind == "transient":
        raise TransientError(f"injected transient fault at {step}")
    if kind == "crash":
        raise RuntimeError(f"injected crash at {step}")


def now_ms() -> int:
    """The worker's clock in milliseconds (shifted when a test says so)."""
    return int((time.time() + _SKEW_S) * 1000)
