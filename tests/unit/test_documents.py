"""Document profiles and the pure parts of document rules: mapping, amounts, fingerprints, validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from streams.apply.sql import set_row
from streams.documents.engine import content_of, differences, digest, fingerprint, line_amount, plan_document
from streams.documents.spec import CreateRule, load_documents
from streams.errors import ConfigError, TerminalError

DEMO = Path(__file__).resolve().parents[2] / "schemas" / "mappings" / "demo-orders.yaml"


def demo_rule() -> CreateRule:
    return next(r for r in load_documents([DEMO]).creates if r.name == "sales_order")


def test_the_demo_profile_loads_every_flow() -> None:
    profile = load_documents([DEMO])
    assert [r.name for r in profile.creates] == ["sales_order", "return_order"]
    assert {r.name for r in profile.rollups} == {"fulfilment", "receivables", "return_status"}
    topics = {r.topic for r in profile.canonical}
    assert topics == {f"canonical.{n}.v1" for n in ("sales_order", "invoice", "payment", "shipment", "inventory",
                                                      "return")}
    for rule in profile.canonical:
        assert {"global_id", "crm_id", "erp_id", "deleted", "metadata"} <= rule.schema_fields()


def test_a_won_deal_maps_to_order_columns_with_an_exact_total() -> None:
    header = {"id": "d1", "account_id": "a1", "stage": "closed_won", "currency": "cny", "erp_order_no": None}
    lines = [{"product_code": "P001-A", "quantity": Decimal("3"), "unit_price": Decimal("1299.99")},
             {"product_code": "P002-B", "quantity": Decimal("2.5"), "unit_price": Decimal("0.07")}]
    out_header, out_lines, total = plan_document(demo_rule(), header, lines)
    assert out_lines == [{"sku": "P001-A", "qty": Decimal("3"), "price_fen": 129999},
                         {"sku": "P002-B", "qty": Decimal("2.5"), "price_fen": 7}]
    assert total == 389997 + 18  # 2.5 x 7 = 17.5 fen, half up
    assert out_header == {"currency": "CNY", "total_fen": total}  # cust_no comes from the identity link


@pytest.mark.parametrize(("qty", "price", "fen"), [("1", "1", 1), ("0.5", "3", 2), ("0.499", "1", 0),
                                                   ("1000000.001", "100", 100000000)])
def test_line_amounts_round_half_up_to_the_fen(qty: str, price: str, fen: int) -> None:
    assert line_amount({"q": Decimal(qty), "p": int(price)}, ("q", "p")) == fen


def test_a_target_counting_in_yuan_keeps_the_cents() -> None:
    """numeric(21,9) in currency units, amount_places 2: 2,999.95 stays 2,999.95 (not 3,000)."""
    rule = CreateRule(**_rule(
        lines="SELECT * FROM public.lines WHERE deal = %(key)s",
        target={"table": "public.orders", "key": "no", "columns": {"cust": {"ref": "account_id"},
                                                                   "grand_total": {"total": True}},
                "lines": {"table": "public.order_items", "parent": "parent", "amount": ["qty", "rate"],
                          "amount_places": 2, "columns": {"qty": {"column": "quantity"},
                                                          "rate": {"column": "price"}}}}))
    lines = [{"quantity": Decimal("1"), "price": Decimal("2999.950000000")},
             {"quantity": Decimal("3"), "price": Decimal("0.333")}]  # 0.999 -> 1.00, half up to the cent
    header, _, total = plan_document(rule, {"account_id": "a1"}, lines)
    assert total == Decimal("3000.95") and header["grand_total"] == Decimal("3000.95")
    assert line_amount({"q": Decimal("1"), "p": Decimal("2999.95")}, ("q", "p"), 2) == Decimal("2999.95")


def test_a_rollup_value_the_target_does_not_accept_is_a_dead_letter() -> None:
    rule = next(r for r in load_documents([DEMO]).rollups if r.name == "fulfilment")
    rule.check("SO1", {"erp_order_no": "SO1", "fulfillment_status": "shipped"})
    with pytest.raises(TerminalError, match="fulfilment SO1: fulfillment_status is 'backordered'; the target"
                                            " accepts only ordered, credit_hold"):
        rule.check("SO1", {"erp_order_no": "SO1", "fulfillment_status": "backordered"})


@pytest.mark.parametrize(("change", "message"), [
    ({"currency": "USD"}, "header currency is 'USD'; the target accepts only CNY"),
    ({"quantity": Decimal("-2")}, "line 1 quantity is -2: it must be positive"),
    ({"quantity": Decimal("0")}, "line 1 quantity is 0: it must be positive"),
    ({"unit_price": "abc"}, "line 1 unit_price"),
])
def test_invalid_deals_are_terminal_errors_naming_the_column(change: dict[str, object], message: str) -> None:
    header = {"stage": "closed_won", "currency": "CNY", "account_id": "a1"}
    line = {"product_code": "P001-A", "quantity": Decimal("1"), "unit_price": Decimal("1.00")}
    header.update({k: v for k, v in change.items() if k in header})
    line.update({k: v for k, v in change.items() if k in line})
    with pytest.raises(TerminalError) as caught:
        plan_document(demo_rule(), header, [line])
    assert message in caught.value.message


def test_the_fingerprint_ignores_line_order_and_sees_any_edit() -> None:
    a, b = {"sku": "A", "qty": Decimal("1")}, {"sku": "B", "qty": Decimal("2")}
    assert digest({"x": 1}, [a, b]) == digest({"x": 1}, [b, a])
    assert digest({"x": 1}, [a, b]) != digest({"x": 1}, [a, {**b, "qty": Decimal("3")}])
    assert digest({"x": 1}, [a]) != digest({"x": 2}, [a])


def test_a_diverged_document_names_what_changed() -> None:
    header = {"id": "d1", "account_id": "a1", "stage": "closed_won", "currency": "CNY", "erp_order_no": None}
    line = {"product_code": "P001-A", "quantity": Decimal("2"), "unit_price": Decimal("10.00")}
    before = content_of(demo_rule(), header, [line], True)
    after = content_of(demo_rule(), {**header, "currency": "cny"}, [{**line, "quantity": Decimal("5")}], True)
    assert differences(before, after) == "total_fen 2000 → 5000, line 1 qty 2 → 5"
    assert differences(before, content_of(demo_rule(), header, [line, line], True)) == \
        "total_fen 2000 → 4000, lines 1 → 2"
    assert differences(before, before) == "" and differences(None, after) == ""
    assert fingerprint(before) == digest(*plan_document(demo_rule(), header, [line])[:2])  # digests kept


def _load(tmp_path: Path, data: dict[str, object]) -> None:
    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    load_documents([path])


def _rule(**changes: object) -> dict[str, object]:
    rule: dict[str, object] = {
        "name": "order", "entity": "order", "source": "crm", "watch": {"public.deals": "id"},
        "header": "SELECT * FROM public.deals WHERE id = %(key)s",
        "target": {"table": "public.orders", "key": "no", "columns": {"cust": {"ref": "account_id"}}},
        "refs": {"account_id": {"entity": "customer"}},
    }
    rule.update(changes)
    return rule


@pytest.mark.parametrize(("changes", "message"), [
    ({"refs": {}}, "ref 'account_id' is not in refs"),
    ({"header": "SELECT * FROM public.deals WHERE id = %(id)s"}, "take one parameter, %(key)s"),
    ({"watch": {"deals": "id"}}, "must be schema.table"),
    ({"watch": {"public.deals": {"column": "id", "query": "SELECT 1"}}}, "either column"),
    ({"require_lines": True}, "require_lines needs a lines query"),
    ({"target": {"table": "public.orders", "key": "no", "columns": {"t": {"total": True}}}}, "needs target.lines"),
    ({"source": "sap"}, "source"),
    ({"refs": {"account_id": {}}}, "either entity (its cross-reference) or lookup"),
    ({"refs": {"account_id": {"lookup": "SELECT id FROM public.items WHERE code = %(code)s"}}},
     "a lookup query takes one parameter, %(value)s"),
])
def test_a_bad_document_profile_names_the_key(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"creates": [_rule(**changes)]})
    assert message in caught.value.message and "docs.yaml" in caught.value.message


def test_rule_names_are_unique_and_unknown_sections_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rule names must be unique: order"):
        _load(tmp_path, {"creates": [_rule(), _rule()]})
    with pytest.raises(ConfigError, match="creates, rollups and canonical"):
        _load(tmp_path, {"orders": []})
    with pytest.raises(ConfigError, match="cannot read document profile"):
        load_documents([tmp_path / "missing.yaml"])


def test_a_rollup_writes_only_when_a_value_differs_and_returns_the_values_before() -> None:
    text = set_row("public.accounts", "id", ["ar_balance", "last_payment_at"]).as_string(None)
    assert text == ('UPDATE "public"."accounts" AS t SET "ar_balance" = %(ar_balance)s, "last_payment_at" ='
                    ' %(last_payment_at)s FROM (SELECT "id", "ar_balance", "last_payment_at" FROM "public"."accounts"'
                    ' WHERE "id" = %(__key)s FOR UPDATE) AS o WHERE t."id" = o."id"'
                    ' AND (t."ar_balance", t."last_payment_at") IS DISTINCT FROM (%(ar_balance)s, %(last_payment_at)s)'
                    ' RETURNING o."ar_balance", o."last_payment_at"')


def test_an_update_of_unwatched_columns_is_no_news() -> None:
    lookup = demo_rule().watch["public.opportunities"]
    old = {"id": "d1", "stage": "closed_won", "currency": "CNY", "account_id": "a1", "erp_order_no": None,
           "fulfillment_status": None}
    assert not lookup.touches({**old, "fulfillment_status": "shipped"}, old)  # the sync's own rollup
    assert lookup.touches({**old, "stage": "negotiation"}, old)
    assert lookup.touches(old, None)  # an insert, a delete or a snapshot read
    assert demo_rule().watch["public.opportunity_lines"].touches({"quantity": 2}, {"quantity": 2})  # no `changed`
