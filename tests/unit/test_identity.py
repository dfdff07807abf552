"""Identity resolution (pure): normalisation and matching against the seed's designed population."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.identity.match import Index, Record, fuzzy_key, link_all, normalize_name, similarity
from streams.local.seed import generate


@pytest.mark.parametrize("raw, normal", [
    ("华信科技有限公司", "华信科技"),
    ("华信科技股份有限公司", "华信科技"),
    ("华信科技（中国）有限公司", "华信科技"),
    ("  华信　科技 有限责任公司 ", "华信科技"),
    ("Huaxin Technology Co., Ltd.", "huaxintechnology"),
    ("ＡＢＣ Trading Limited", "abctrading"),
])
def test_normalize_name(raw: str, normal: str) -> None:
    assert normalize_name(raw) == normal


def test_fuzzy_key_drops_regions() -> None:
    assert fuzzy_key("深圳市华信科技有限公司") == fuzzy_key("华信科技（深圳）股份有限公司") == "华信科技"


@pytest.mark.parametrize("accounts", [60, 300])
def test_seed_links_as_designed(accounts: int) -> None:
    data = generate(accounts)
    crm = [Record("crm", str(a["id"]), (a["uscc"],), a["legal_name"]) for a in data.crm["accounts"]]
    erp = [Record("erp", c["cust_no"], (c["tax_no"],), c["full_name"]) for c in data.erp["customers"]]
    kinds = Counter(m.kind for _, m in link_all(crm, erp, 0.86, 0.04))
    m = data.manifest
    assert kinds == {"exact": m.exact_pairs, "name": m.name_pairs, "fuzzy": m.fuzzy_pairs,
                     "review": m.ambiguous_crm, "none": m.crm_only}


def test_ambiguous_names_go_to_review_never_linked() -> None:
    index = Index()
    index.add(Record("erp", "C1", (None,), "华信科技（北京）有限公司"))
    index.add(Record("erp", "C2", (None,), "华信科技（上海）有限公司"))
    found = index.match(Record("crm", "a", (None,), "华信科技有限公司"), 0.86, 0.04)
    assert found.kind == "review" and found.target is None
    assert {c.source_id for c in found.candidates} == {"C1", "C2"}


def test_shared_tax_number_goes_to_review() -> None:
    index = Index()
    index.add(Record("erp", "C1", ("91X",), "甲公司"))
    index.add(Record("erp", "C2", ("91x",), "乙公司"))
    assert index.match(Record("crm", "a", ("91X",), "丙"), 0.86, 0.04).kind == "review"


def test_removed_records_are_not_offered() -> None:
    index = Index()
    index.add(Record("erp", "C1", ("91X",), "华信科技有限公司"))
    index.remove("C1")
    assert index.match(Record("crm", "a", ("91X",), "华信科技有限公司"), 0.86, 0.04).kind == "none"


def test_names_that_differ_in_a_number_are_never_fuzzy_linked() -> None:
    index = Index()
    index.add(Record("erp", "C1", (None,), "华信精密第一分厂有限公司"))
    index.add(Record("erp", "C2", (None,), "华信精密2号仓储有限公司"))
    assert index.match(Record("crm", "a", (None,), "华信精密第一分厂股份有限公司"), 0.86, 0.04).kind == "name"
    assert index.match(Record("crm", "b", (None,), "华信精密3号仓储有限公司"), 0.86, 0.04).kind == "none"
    assert index.match(Record("crm", "c", (None,), "华信精密2号仓储（中国）有限公司"), 0.86, 0.04).kind == "name"
    assert index.match(Record("crm", "d", (None,), "华信精密2号仓储物流有限公司"), 0.86, 0.04).kind == "fuzzy"
    assert index.match(Record("crm", "e", (None,), "华信精密3号仓储物流有限公司"), 0.86, 0.04).kind == "none"


def test_a_creation_waits_until_the_other_system_was_read_up_to_the_noted_ends() -> None:
    from streams.agents.creates import read_up_to

    ends = {"0": 120, "1": 7}
    assert not read_up_to({"0": 120}, ends)  # partition 1: nothing committed yet
    assert not read_up_to({"0": 119, "1": 7}, ends)
    assert read_up_to({"0": 120, "1": 9}, ends)
    assert read_up_to({}, {})  # a topic that does not exist: nothing to wait for


def test_a_creation_is_dropped_once_linked_reviewed_or_merged() -> None:
    from streams.agents.creates import Due
    from streams.store import Link

    def due(link: Link | None, reviewed: bool = False) -> Due:
        return Due("customer", "g1", "crm", "c1", None, link, reviewed)

    assert due(Link("g1", "c1", None, "single")).still_alone()
    assert not due(Link("g1", "c1", "E1", "exact")).still_alone()  # its twin turned up
    assert not due(Link("g1", "c1", None, "single"), reviewed=True).still_alone()
    assert not due(Link("g1", "c1", None, "merged")).still_alone()
    assert not due(Link("g2", "c1", None, "single")).still_alone()  # attached to another entity by a person
    assert not due(None).still_alone()


def test_duplicates_are_grouped_through_any_shared_key() -> None:
    from streams.identity.match import duplicate_groups

    recs = [Record("crm", "a", ("91310000MA1K00000A",), "上海甲科技有限公司"),
            Record("crm", "b", (" 91310000ma1k00000a",), "上海乙贸易有限公司"),  # a's tax id, written differently
            Record("crm", "c", (None,), "上海 乙贸易有限公司"),  # b's name, spaced
            Record("crm", "d", ("91310000MA1K00000D",), "北京丁物流有限公司")]
    assert [[r.source_id for r in g] for g in duplicate_groups(recs)] == [["a", "b", "c"]]


NAMES = st.text(alphabet="华信科技精密机械上海1号分公司", max_size=12)


@given(NAMES, NAMES, st.sampled_from([0.5, 0.8, 0.86, 0.95]))
def test_similarity_bounded_below_a_threshold_decides_as_the_full_ratio(a: str, b: str, threshold: float) -> None:
    """The cheap bounds only rule out names the full ratio puts below the threshold; at or above it, the ratio."""
    full, bounded = similarity(a, b), similarity(a, b, threshold)
    if full >= threshold:
        assert bounded == full
    else:
        assert bounded < threshold


def test_fuzzy_candidates_are_the_names_with_the_same_numbers() -> None:
    """Among 500 branches whose names differ only by their number, the one with the same number is the match;
    a name without numbers is still found by its words."""
    index = Index()
    for i in range(500):
        index.add(Record("erp", f"E{i}", (None,), f"上海精密机械{i}号分公司"))
    index.add(Record("erp", "plain", (None,), "华信精密机械制造"))
    found = index.match(Record("crm", "c", (None,), "上海精密机械17号厂"), 0.8, 0.04)
    assert (found.kind, found.target and found.target.source_id) == ("fuzzy", "E17")
    found = index.match(Record("crm", "d", (None,), "华信精密机械制造厂"), 0.8, 0.04)
    assert (found.kind, found.target and found.target.source_id) == ("fuzzy", "plain")
    index.remove("E17")
    assert index.match(Record("crm", "c", (None,), "上海精密机械17号厂"), 0.8, 0.04).kind == "none"
