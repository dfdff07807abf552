"""The steady benchmark's split of an edit's latency into its hops (capture, normalize, reconcile, apply)."""

from __future__ import annotations

import json
from typing import Any

from streams.bench.hops import first_times, split


def _raw(topic: str, column: str, value: Any, ms: int) -> dict[str, Any]:
    return {"topic": topic, "value": {"after": {column: value}}, "timestamp": ms}


def _change(system: str, field: str, value: Any, ms: int) -> dict[str, Any]:
    return {"topic": "sync.changes.customer", "timestamp": ms,
            "value": {"system": system, "values_json": json.dumps({field: value})}}


def _command(system: str, field: str, value: Any, ms: int, op: str = "set") -> dict[str, Any]:
    return {"topic": f"sync.commands.{system}", "timestamp": ms,
            "value": {"system": system, "op": op, "field": field, "value_json": json.dumps(value)}}


def test_each_hop_ends_at_the_earliest_record_of_the_value_from_its_system() -> None:
    records = [
        _raw("erp.public.customers", "email", "a@x.example", 1_000_300),  # the echo of the sync's write, read first
        _raw("crm.public.accounts", "email", "a@x.example", 1_000_900),  # the row's next change: not the edit's
        _raw("crm.public.accounts", "email", "a@x.example", 1_000_030),
        _change("erp", "email", "a@x.example", 1_000_100),  # the echo's change record
        _change("crm", "email", "a@x.example", 1_000_130),
        _command("erp", "email", "a@x.example", 1_000_190),
        _command("erp", "email", "a@x.example", 1_000_100, op="create"),  # a creation is not the edit's write
        _raw("erp.public.customers", "credit_limit_fen", 500, 1_000_010),
        _change("erp", "credit_limit_fen", 500, 1_000_020),
        _command("crm", "credit_limit_fen", 500, 1_000_040),
        {"topic": "crm.public.accounts", "value": None, "timestamp": 1_000_000},  # a tombstone
    ]
    first = first_times(records)
    assert first[("raw", "crm", "email", "a@x.example")] == 1000.03
    assert first[("raw", "erp", "email", "a@x.example")] == 1000.3
    assert first[("command", "erp", "email", "a@x.example")] == 1000.19
    out = split(first, {"email:a@x.example": (1000.0, 1000.25), "credit_limit_fen:500": (1000.0, 1000.05),
                        "email:never@x.example": (1000.0, 1000.5)})
    assert out["traced"] == 2  # the third never reached the raw topic: not split
    hops = ("capture", "normalize", "reconcile", "apply")
    assert [out["all"][hop]["max"] for hop in hops] == [30, 100, 60, 60]
    assert [out["crm"][hop]["max"] for hop in hops] == [30, 100, 60, 60]  # the e-mail, made on the CRM
    assert [out["erp"][hop]["max"] for hop in hops] == [10, 10, 20, 10]  # the credit limit, made on the ERP
