"""Fault injection for tests: make a named step fail once, as a transient error or as a crash.

Off unless the environment variable ``CRM_ERP_SYNC_FAULTS`` names steps (tests set it on a worker
they start), e.g. ``normalize.send=transient,apply.write=crash``: each named step raises once, the
first time it runs. ``transient`` raises :class:`TransientError` (the batch is retried in the
process); ``crash`` raises ``RuntimeError`` (the worker ends without acknowledging the batch, and is
started again). Read once at import; production never sets it.
"""

from __future__ import annotations

import os

from streams.errors import TransientError

ENV = "CRM_ERP_SYNC_FAULTS"
STEPS = ("normalize.send", "reconcile.commit", "apply.write", "documents.step")


def _plan(text: str) -> dict[str, str]:
    plan: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step, _, kind = item.partition("=")
        if step not in STEPS or kind not in ("transient", "crash"):
            raise ValueError(f"{ENV}: {item!r} is not <step>=transient|crash with a step of {', '.join(STEPS)}")
        plan[step] = kind
    return plan


_PENDING = _plan(os.environ.get(ENV, ""))


def point(step: str) -> None:
    """Fail here once if the plan names ``step``."""
    kind = _PENDING.pop(step, None)
    if kind == "transient":
        raise TransientError(f"injected transient fault at {step}")
    if kind == "crash":
        raise RuntimeError(f"injected crash at {step}")
