"""The production topology under faults, and the fault matrix under load (scenarios in ``streams/bench/faults.py``).

Both run on the real stack; each asserts that after every burst both databases agree on every
mapped field, every new account exists once in the ERP, every won deal has one order and nothing
is in the dead letters, and prints the time to converge (``-s``). ``crm-erp-sync bench faults``
runs the same scenarios and reports the same figures.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.bench import faults

pytestmark = pytest.mark.e2e


def nothing_lost_or_doubled(r: dict[str, Any]) -> None:
    assert r["new_accounts_created_once"] == r["new_accounts"], r
    assert r["deals_with_one_order"] == r["deals"], r
    assert r["dead_letters"] == 0, r


def test_brokers_connect_and_a_worker_killed_during_a_burst_lose_and_double_nothing() -> None:
    r = faults.three_brokers()
    assert r["changes"] >= faults.EDITS
    nothing_lost_or_doubled(r)


def test_each_fault_under_load_then_all_together_heals_and_loses_nothing() -> None:
    rounds = faults.matrix()
    assert [r["fault"] for r in rounds][-1] == "all five" and len(rounds) == 6
    for r in rounds:
        assert r["changes"] >= faults.LOAD
        nothing_lost_or_doubled(r)
