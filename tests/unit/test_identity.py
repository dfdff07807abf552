"""Identity resolution (pure): normalisation and matching against the seed's designed population."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.identity.match import Index, Record, fuzzy_key, link_all, normalize_name
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
