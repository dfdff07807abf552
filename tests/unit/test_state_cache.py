"""The worker's cache of entity states (pure: versions and eviction; the store's version check is integration)."""

from __future__ import annotations

from streams.reconcile.core import EntityState
from streams.store import StateCache


def test_versions_of_unknown_keys_never_match_a_stored_row() -> None:
    cache = StateCache(10)
    state = EntityState(rows={"crm": 1})
    cache.put({("customer", "g1"): (7, state)})
    assert cache.versions([("customer", "g1"), ("customer", "g2")]) == [7, -1]
    assert cache.get(("customer", "g1")) is state


def test_the_least_recently_written_go_first() -> None:
    cache = StateCache(2)
    cache.put({("e", "a"): (1, EntityState()), ("e", "b"): (2, EntityState())})
    cache.put({("e", "a"): (3, EntityState())})  # rewritten: now the newest
    cache.put({("e", "c"): (4, EntityState())})
    assert cache.versions([("e", "a"), ("e", "b"), ("e", "c")]) == [3, -1, 4]


def test_a_zero_limit_keeps_nothing() -> None:
    cache = StateCache(0)
    cache.put({("e", "a"): (1, EntityState())})
    assert cache.versions([("e", "a")]) == [-1]


def test_a_state_taken_is_no_longer_cached_until_put_back() -> None:
    cache = StateCache(10)
    state = EntityState(rows={"crm": 1})
    cache.put({("customer", "g1"): (7, state)})
    assert cache.take(("customer", "g1")) is state
    assert cache.versions([("customer", "g1")]) == [-1]  # a batch that fails never puts it back
    cache.put({("customer", "g1"): (8, state)})
    assert cache.versions([("customer", "g1")]) == [8]
