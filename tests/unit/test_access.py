"""What the sync needs of each database, from the profiles; the least-privilege scripts rendered from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.access import needs, select_names
from streams.roles import capture_connector, render
from streams.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_select_names_reads_aliases_and_bare_columns_at_the_top_level() -> None:
    query = ("SELECT o.order_no AS erp_order_no,"
             " CASE WHEN o.status = 90 THEN 'a, b' ELSE 'c' END AS fulfillment_status,"
             " coalesce(sum(x.fen), 0) total, o.currency -- a comment, with a comma\n"
             " FROM public.sales_orders o WHERE o.order_no IN (SELECT order_no FROM t)")
    assert select_names(query) == ["erp_order_no", "fulfillment_status", "total", "currency"]
    with pytest.raises(ValueError, match="AS name"):
        select_names("SELECT count(*) FROM t")


def test_the_demo_needs_what_its_profiles_map() -> None:
    access = needs(load_settings(None))
    crm, erp = access["crm"], access["erp"]
    assert {"public.accounts", "public.opportunities", "public.opportunity_lines"} <= crm.captured
    # mapped fields, the deactivation field, the receivables rollup; never the CRM's own tier or owner
    assert {"email", "phone", "status", "ar_balance", "last_payment_at"} <= crm.updates["public.accounts"]
    assert not {"tier", "owner", "industry", "name"} & crm.updates["public.accounts"]
    assert crm.updates["public.opportunities"] == {"erp_order_no", "fulfillment_status"}
    assert {"public.sales_orders", "public.sales_order_lines", "public.customers"} <= erp.inserts
    assert "public.invoices" not in erp.inserts and "public.invoices" not in erp.updates


def test_columns_every_write_stamps_are_granted_with_the_mapped_ones(tmp_path: Path) -> None:
    """The ERPNext-like profiles stamp `modified` / `modified_by` on each write: the applier may set them."""
    config = tmp_path / "sync.yaml"
    config.write_text("local: {erp_demo: erpnext}\n", encoding="utf-8")
    erp = needs(load_settings(config))["erp"]
    assert {"email_id", "modified", "modified_by"} <= erp.updates["public.tabCustomer"]
    assert {"standard_rate", "modified", "modified_by"} <= erp.updates["public.tabItem"]


@pytest.mark.parametrize("database", ["crm", "erp", "store"])
def test_deploy_sql_is_what_the_demo_profiles_render(database: str) -> None:
    """deploy/sql/ is rendered, never edited by hand: `crm-erp-sync roles DB > deploy/sql/DB.sql`."""
    committed = (REPO / "deploy" / "sql" / f"{database}.sql").read_text(encoding="utf-8")
    assert committed == render(load_settings(None), database).text


def test_the_capture_roles_connector_reads_exactly_the_captured_tables(tmp_path: Path) -> None:
    """Its table filter is what the role may SELECT and the publication holds (the ERPNext-like names have
    spaces and capitals); it leaves the DBA's publication as it is."""
    config = tmp_path / "sync.yaml"
    config.write_text("local: {erp_demo: erpnext}\n", encoding="utf-8")
    settings = load_settings(config)
    for source in ("crm", "erp"):
        connector = capture_connector(settings, source)["config"]
        assert connector["publication.autocreate.mode"] == "disabled"
        patterns = connector["table.include.list"].split(",")
        wanted = needs(settings)[source].captured | {"sync_meta.heartbeat", "sync_meta.debezium_signal"}
        candidates = wanted | {t.replace(".", "x") for t in wanted} | {t + "s" for t in wanted} | {"public.contacts"}
        assert {t for t in candidates if any(re.fullmatch(p, t) for p in patterns)} == wanted
    assert "public.tabSales Order" in needs(settings)["erp"].captured
