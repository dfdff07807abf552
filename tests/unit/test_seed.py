"""Demo data: deterministic, shaped for identity resolution, synthetic."""

from __future__ import annotations

from streams.local.seed import generate


def test_deterministic() -> None:
    a, b = generate(100), generate(100)
    assert a.crm["accounts"] == b.crm["accounts"] and a.erp["customers"] == b.erp["customers"]


def test_population_matches_manifest() -> None:
    data = generate(300)
    m = data.manifest
    pairs = m.exact_pairs + m.name_pairs + m.fuzzy_pairs
    assert len(data.crm["accounts"]) == pairs + m.ambiguous_crm + m.crm_only
    assert len(data.erp["customers"]) == pairs + m.ambiguous_erp + m.erp_only
    assert min(m.exact_pairs, m.name_pairs, m.fuzzy_pairs, m.ambiguous_crm, m.crm_only, m.erp_only) > 0
    by_tax = {c["tax_no"] for c in data.erp["customers"] if c["tax_no"]}
    assert sum(1 for a in data.crm["accounts"] if a["uscc"] in by_tax) == m.exact_pairs


def test_realistic_and_synthetic() -> None:
    data = generate(100)
    assert all(c["full_name"].endswith("公司") for c in data.erp["customers"])
    assert all(a["email"].endswith("@example.com") for a in data.crm["accounts"])
    assert all("-5550" in a["phone"] for a in data.crm["accounts"])
    assert {o["status"] for o in data.erp["sales_orders"]} >= {20, 40, 60}


def test_the_erpnext_like_rows_have_one_shape_per_table() -> None:
    """Each table's rows name the same columns (they are inserted with the first row's), at any size."""
    from streams.local.seed import demo_data

    for accounts in (40, 60, 300):
        for table, rows in demo_data(accounts, "erpnext").erp.items():
            if table != "_sequences":
                assert all(set(r) == set(rows[0]) for r in rows), (accounts, table)
