"""Flows F2, F3 and F5 on the real stack: won deal -> ERP sales order, fulfilment back, returns, canonical."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from streams.documents.spec import load_documents
from streams.local.erps import DemoErp, Order, profile_paths
from streams.local.harness import (
    Harness,
    TopicReader,
    records_in,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
    win_deal,
)
from streams.local.ports import free_port
from streams.local.status import scrape
from streams.mapping.profile import load_profiles
from streams.topics import raw_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync(demo_erp: DemoErp, failures: Callable[[], bool]) -> Iterator[Harness]:
    # The worker and the CLI log in as deploy/sql's applier role (rendered for these profiles), not the owner.
    with scratch_harness(f"orders-{demo_erp.name}", failures, erp=demo_erp.name, least_privilege=True) as h:
        h.write_config(processors=profile_paths(demo_erp))
        h.demo_erp = demo_erp  # type: ignore[attr-defined]  # the helpers below act on it
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, ("crm.public.accounts", raw_topic("erp", demo_erp.customer_table)))
            wait_for_identity(h)
            yield h


TAKEN: set[str] = set()  # customers a test already used


def erp_of(h: Harness) -> DemoErp:
    erp: DemoErp = h.demo_erp  # type: ignore[attr-defined]
    return erp


def customer(h: Harness, limit: Decimal = Decimal(10**10), blocked: bool = False) -> tuple[str, str]:
    """A linked (CRM account, ERP customer) pair without deals or orders; (account id, customer key)."""
    with h.connect("sync") as conn, h.connect("erp") as erp, h.connect("crm") as crm:
        free = set(erp_of(h).customers_without_orders(erp)) - TAKEN
        dealing = {str(r[0]) for r in crm.execute("SELECT DISTINCT account_id FROM opportunities").fetchall()}
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
                             " AND crm_id IS NOT NULL AND erp_id IS NOT NULL ORDER BY erp_id").fetchall()
        account, key = next((c, e) for c, e in pairs if e in free and c not in dealing)
        erp_of(h).set_credit(erp, key, limit, blocked)
    TAKEN.add(key)
    return account, key


def order_of(h: Harness, customer_key: str) -> list[Order]:
    with h.connect("erp") as erp:
        return erp_of(h).orders(erp, customer_key)


def one_order(h: Harness, customer_key: str, what: str) -> Order:
    rows = wait_for(lambda: order_of(h, customer_key), 60, 0.3, what)
    assert len(rows) == 1, rows
    return rows[0]


def deal_status(h: Harness, deal: str) -> tuple[Any, Any]:
    with h.connect("crm") as crm:
        row = crm.execute("SELECT erp_order_no, fulfillment_status FROM opportunities WHERE id = %s",
                          (deal,)).fetchone()
    assert row is not None
    return row[0], row[1]


def skus(h: Harness, n: int) -> list[str]:
    with h.connect("erp") as erp:
        return erp_of(h).items(erp, n)


def lines_of(h: Harness, order: str) -> list[tuple[int, str, Decimal, Decimal]]:
    with h.connect("erp") as erp:
        return erp_of(h).lines(erp, order)


def test_won_deal_becomes_one_order_with_exact_lines(sync: Harness) -> None:
    account, cust = customer(sync)
    a, b, c = skus(sync, 3)
    deal = win_deal(sync, account, [(a, "3", "1299.99"), (b, "2.5", "0.07"), (c, "1", "100000.01")])
    order = one_order(sync, cust, "the won deal's ERP order")
    assert (order.held, order.currency) == (False, "CNY")
    assert order.total == Decimal("3899.97") + Decimal("0.18") + Decimal("100000.01")  # 2.5 x 0.07: half up
    lines = lines_of(sync, order.key)
    assert sorted((s, q, p) for _, s, q, p in lines) == sorted(
        [(a, Decimal("3.000"), Decimal("1299.99")), (b, Decimal("2.500"), Decimal("0.07")),
         (c, Decimal("1.000"), Decimal("100000.01"))])
    assert [n for n, *_ in lines] == [1, 2, 3]
    wait_for(lambda: deal_status(sync, deal) == (order.key, "ordered"), 60, 0.3, "the order number on the deal")


def test_a_deal_and_its_lines_in_one_transaction(sync: Harness) -> None:
    account, cust = customer(sync)
    deal = win_deal(sync, account, [(s, "4", "10.00") for s in skus(sync, 3)], one_transaction=True)
    order = one_order(sync, cust, "the order of a deal written in one transaction")
    assert order.total == 3 * 4 * 10
    assert len(lines_of(sync, order.key)) == 3
    wait_for(lambda: deal_status(sync, deal)[0] == order.key, 60, 0.3, "the order number on the deal")


def test_credit_hold_for_a_blocked_customer_and_over_the_limit(sync: Harness) -> None:
    blocked_account, blocked = customer(sync, blocked=True)
    small_account, small = customer(sync, limit=Decimal(500))
    sku = skus(sync, 1)[0]
    deal_blocked = win_deal(sync, blocked_account, [(sku, "1", "1.00")])
    deal_over = win_deal(sync, small_account, [(sku, "1", "500.01")])
    assert one_order(sync, blocked, "the blocked customer's order").held
    assert one_order(sync, small, "the order over the limit").held
    wait_for(lambda: deal_status(sync, deal_blocked)[1] == "credit_hold", 60, 0.3, "credit_hold on the deal")
    wait_for(lambda: deal_status(sync, deal_over)[1] == "credit_hold", 60, 0.3, "credit_hold on the deal")
    within_account, within = customer(sync, limit=Decimal(500))
    win_deal(sync, within_account, [(sku, "1", "500.00")])
    assert not one_order(sync, within, "the order just within the limit").held


def test_a_deal_of_an_unlinked_account_waits_then_goes_through(sync: Harness) -> None:
    with sync.connect("crm") as crm:
        account = str(crm.execute("INSERT INTO accounts (name, tier, email) VALUES ('待链接测试科技', 'C',"
                                  " 'pending@example.com') RETURNING id").fetchone()[0])  # type: ignore[index]
    deal = win_deal(sync, account, [(skus(sync, 1)[0], "2", "50.00")])

    def pending() -> Any:
        with sync.connect("sync") as conn:
            return conn.execute("SELECT reason FROM sync.documents d JOIN sync.xref x USING (global_id)"
                                " WHERE d.state = 'pending' AND x.crm_id = %s", (deal,)).fetchone()

    reason = wait_for(pending, 60, 0.3, "the deal pending")[0]
    assert account in reason and "not linked" in reason
    listing = _cli(sync, "documents", "--pending")
    assert deal in listing and "not linked" in listing
    with sync.connect("crm") as crm:  # tier A: the account becomes an ERP customer, and so linked
        crm.execute("UPDATE accounts SET tier = 'A' WHERE id = %s", (account,))

    def cust_no() -> Any:
        with sync.connect("sync") as conn:
            return scalar(conn, "SELECT erp_id FROM sync.xref WHERE entity = 'customer' AND crm_id = %s", account)

    erp_customer = wait_for(cust_no, 60, 0.3, "the account created in the ERP")
    with sync.connect("erp") as erp:
        erp_of(sync).set_credit(erp, erp_customer, Decimal(100000))
    order = one_order(sync, erp_customer, "the pending deal's order once linked")
    wait_for(lambda: deal_status(sync, deal)[0] == order.key, 60, 0.3, "the order number on the deal")
    assert pending() is None


def _cli(h: Harness, *args: str) -> str:
    import subprocess

    done = subprocess.run(h.cli(*args), capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def account_money(h: Harness, account: str) -> tuple[Decimal, Any]:
    with h.connect("crm") as crm:
        row = crm.execute("SELECT ar_balance, last_payment_at FROM accounts WHERE id = %s", (account,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_fulfilment_invoices_and_payments_reach_the_crm_exactly(sync: Harness) -> None:
    account, cust = customer(sync)
    deal = win_deal(sync, account, [(skus(sync, 1)[0], "3", "333.33")])
    order = one_order(sync, cust, "the order")
    order_no = order.key
    assert order.total == Decimal("999.99")
    with sync.connect("erp") as erp:
        shipment = erp_of(sync).ship(erp, order_no, "顺丰速运", "SF1234567890")
    wait_for(lambda: deal_status(sync, deal)[1] == "shipped", 60, 0.3, "shipped on the deal")
    reader = TopicReader(sync.bootstrap, sync.registry_url, ["canonical.shipment.v1"])
    try:  # the tracking number leads to a person's address: consumers see it hashed (profile: personal)
        found = reader.wait(lambda rs: [r for r in rs if r["value"]["shipment_no"] == shipment], 60,
                            "the shipment on canonical.shipment.v1")
    finally:
        reader.close()
    assert found[-1]["value"]["tracking_no"] == hashlib.sha256(b"SF1234567890").hexdigest()
    assert found[-1]["value"]["order_no"] == order_no
    with sync.connect("erp") as erp:
        invoice = erp_of(sync).invoice(erp, order_no, order.total)
    wait_for(lambda: deal_status(sync, deal)[1] == "invoiced", 60, 0.3, "invoiced on the deal")
    wait_for(lambda: account_money(sync, account)[0] == Decimal("999.99"), 60, 0.3, "the receivable")
    with sync.connect("erp") as erp:
        erp_of(sync).pay(erp, invoice, Decimal("333.33"), "2026-11-20 10:15:00")
    wait_for(lambda: account_money(sync, account)[0] == Decimal("666.66"), 60, 0.3, "a partial payment")
    paid_at = account_money(sync, account)[1]
    assert paid_at.isoformat() == "2026-11-20T02:15:00+00:00"  # Asia/Shanghai local time, as an instant
    assert deal_status(sync, deal)[1] == "invoiced"
    with sync.connect("erp") as erp:
        erp_of(sync).pay(erp, invoice, Decimal("666.66"), "2026-11-21 09:00:00")
    wait_for(lambda: account_money(sync, account)[0] == Decimal("0.00"), 60, 0.3, "paid in full")
    wait_for(lambda: deal_status(sync, deal)[1] == "paid", 60, 0.3, "paid on the deal")
    assert account_money(sync, account)[1].isoformat() == "2026-11-21T01:00:00+00:00"


def test_a_return_case_round_trip(sync: Harness) -> None:
    account, cust = customer(sync)
    deal = win_deal(sync, account, [(skus(sync, 1)[0], "1", "10.00")])
    order_no = one_order(sync, cust, "the order").key
    wait_for(lambda: deal_status(sync, deal)[0] == order_no, 60, 0.3, "the deal linked to its order")
    with sync.connect("crm") as crm:
        case = str(crm.execute("INSERT INTO cases (account_id, opportunity_id, kind, subject) VALUES"
                               " (%s, %s, 'return', '包装破损退货') RETURNING id",
                               (account, deal)).fetchone()[0])  # type: ignore[index]

    def returned() -> Any:
        with sync.connect("erp") as erp:
            return erp_of(sync).returns(erp, order_no)

    rows = wait_for(returned, 60, 0.3, "the ERP return order")
    assert len(rows) == 1 and rows[0][1:] == ("包装破损退货", False)

    def case_state() -> tuple[Any, Any]:
        with sync.connect("crm") as crm:
            row = crm.execute("SELECT erp_return_no, status FROM cases WHERE id = %s", (case,)).fetchone()
        assert row is not None
        return row[0], row[1]

    wait_for(lambda: case_state() == (rows[0][0], "pending"), 60, 0.3, "the return number on the case")
    with sync.connect("erp") as erp:
        erp_of(sync).refund(erp, rows[0][0])
    wait_for(lambda: case_state() == (rows[0][0], "closed"), 60, 0.3, "the refunded return closes the case")
    assert len(returned()) == 1


def test_canonical_sales_order_read_by_a_plain_consumer(sync: Harness) -> None:
    account, cust_no = customer(sync)
    a, b = skus(sync, 2)
    deal = win_deal(sync, account, [(a, "1.5", "20.00"), (b, "2", "30.00")])
    order_no = one_order(sync, cust_no, "the order").key
    reader = TopicReader(sync.bootstrap, sync.registry_url, ["canonical.sales_order.v1"])
    try:
        found = reader.wait(lambda rs: [r for r in rs if r["value"]["order_no"] == order_no], 60,
                            "the order on canonical.sales_order.v1")
    finally:
        reader.close()
    record = found[-1]["value"]
    assert found[-1]["key"] == record["global_id"].encode()
    assert (record["crm_id"], record["erp_id"], record["cust_no"], record["total_fen"]) == (
        deal, order_no, cust_no, 3000 + 6000)
    assert [(x["sku"], x["qty_milli"], x["price_fen"]) for x in record["lines"]] == [(a, 1500, 2000), (b, 2000, 3000)]
    meta = record["metadata"]  # the change that caused it: the order's header or one of its lines
    assert meta["source_system"] == "erp"
    assert meta["source_table"] in erp_of(sync).order_tables


def dead_letters(h: Harness) -> list[tuple[str, str]]:
    with h.connect("sync") as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT stage, reason FROM sync.dead_letters").fetchall()]


def test_bad_orders_are_dead_letters_and_the_rest_flows(sync: Harness) -> None:
    sku = skus(sync, 1)[0]
    unknown_account, unknown = customer(sync)
    negative_account, negative = customer(sync)
    usd_account, usd = customer(sync)
    good_account, good = customer(sync)
    unknown_deal = win_deal(sync, unknown_account, [(sku, "1", "1.00"), ("NO-SUCH-SKU", "1", "1.00")])
    negative_deal = win_deal(sync, negative_account, [(sku, "-2", "1.00")])
    usd_deal = win_deal(sync, usd_account, [(sku, "1", "1.00")], currency="USD")
    win_deal(sync, good_account, [(sku, "1", "1.00")])
    one_order(sync, good, "the good deal's order, after the bad ones")

    def reasons() -> list[tuple[str, str]]:
        found = dead_letters(sync)
        wanted = [negative_deal, usd_deal] + (["NO-SUCH-SKU"] if erp_of(sync).name == "demo" else [])
        return found if all(any(w in r for _, r in found) for w in wanted) else []

    if erp_of(sync).name == "erpnext":  # its profile looks the item up: the deal waits for it, no dead letter
        with sync.connect("sync") as conn:
            reason = wait_for(lambda: scalar(conn, "SELECT d.reason FROM sync.documents d JOIN sync.xref x"
                                                   " USING (global_id) WHERE x.crm_id = %s AND d.state = 'pending'",
                                             unknown_deal), 60, 0.3, "the deal waiting for its item")
        assert "item NO-SUCH-SKU is not in the ERP" in reason
    found = wait_for(reasons, 60, 0.3, "the dead letters")
    if erp_of(sync).name == "demo":  # the ERP's foreign key refuses it: a dead letter of the applier
        unknown_reason = next(r for s, r in found if "NO-SUCH-SKU" in r)
        assert "sales_order_lines" in unknown_reason and "is not present in table \"items\"" in unknown_reason
    of_deal = {deal: [r for s, r in found if s == "document" and deal in r] for deal in (negative_deal, usd_deal)}
    assert any("line 1 quantity is -2" in r and "positive" in r for r in of_deal[negative_deal])
    assert any("header currency is 'USD'" in r and "CNY" in r for r in of_deal[usd_deal])
    assert order_of(sync, unknown) == order_of(sync, negative) == order_of(sync, usd) == []


def test_replaying_every_topic_still_gives_one_order(sync: Harness) -> None:
    account, cust_no = customer(sync)
    win_deal(sync, account, [(s, "1", "9.99") for s in skus(sync, 3)])
    before = one_order(sync, cust_no, "the order")
    port = free_port()
    erp_ = erp_of(sync)
    sync.write_config(processors={**profile_paths(erp_), "metrics_port": port, "app_id": "crm-erp-sync-replay"})
    rules = load_documents(erp_.documents).rules
    profiles = load_profiles(erp_.profiles)
    raw = sorted({raw_topic(r.source, t) for r in rules for t in r.watch}
                 | {raw_topic(s, p.table_of(s)) for p in profiles for s in ("crm", "erp")}
                 | {raw_topic(s, t) for p in profiles for s in ("crm", "erp") for t in p.watched(s)})
    total = records_in(sync, raw)
    with running(sync.spawn("worker", log_name="replay.log")):  # a new consumer group reads from the start

        def replayed() -> bool:
            samples = scrape(port) or {}
            seen = sum(v for labels, v in samples.get("sync_stage_events_total", [])
                       if labels.get("stage") == "normalize" and labels.get("io") == "in")
            return seen >= total

        wait_for(replayed, 180, 1.0, "the replay of every raw topic")
        commands = records_in(sync, ["sync.commands.erp", "sync.commands.crm"])
        wait_for(lambda: sum(v for _, v in (scrape(port) or {}).get("sync_apply_commands_total", [])) >= commands,
                 120, 1.0, "the replayed commands handled")
    assert one_order(sync, cust_no, "the order after the replay") == before
    with sync.connect("erp") as erp, sync.connect("sync") as conn:
        orders = erp_.all_orders(erp)
        created = dict(erp.execute("SELECT global_id, key FROM sync_meta.created WHERE entity = 'sales_order'"
                                   ).fetchall())
        deals = dict(conn.execute("SELECT global_id::text, crm_id FROM sync.xref WHERE entity = 'sales_order'"
                                  ).fetchall())
    assert set(created.values()) <= orders  # every order the sync made is recorded with its deal's global id
    by_deal = [deals[gid] for gid in created]
    assert len(by_deal) == len(set(by_deal)), "a deal ordered twice"


def test_a_repeated_create_command_makes_no_second_order(sync: Harness) -> None:
    from streams.apply.executor import Applier, Delivery
    from streams.reconcile.records import document_command

    cust_no = customer(sync)[1]
    documents = load_documents(erp_of(sync).documents)
    rule = documents.creates[0]
    payload = erp_of(sync).order_payload(cust_no, skus(sync, 1)[0])
    meta = {"source_commit_time": datetime.now(tz=UTC), "event_id": "test/0/0"}
    command = document_command("document", rule, str(uuid.uuid4()), "", payload, meta)
    applier = Applier(load_profiles(erp_of(sync).profiles), "erp", sync.conninfo("erp"), documents)
    try:
        first = applier.apply([Delivery("test.commands", 0, 1, command)])
        again = applier.apply([Delivery("test.commands", 0, 2, command)])  # a later offset: not skipped as replayed
    finally:
        assert applier.conn is not None
        applier.conn.close()
    assert (first.created, again.created, again.replayed) == (1, 0, 0)
    assert len(order_of(sync, cust_no)) == 1


def test_a_deal_edited_after_its_order_is_flagged_not_pushed(sync: Harness) -> None:
    account, cust_no = customer(sync)
    deal = win_deal(sync, account, [(skus(sync, 1)[0], "2", "10.00")])
    order = one_order(sync, cust_no, "the order")
    order_no = order.key
    wait_for(lambda: deal_status(sync, deal)[0] == order_no, 60, 0.3, "the deal linked to its order")

    def state() -> Any:
        with sync.connect("sync") as conn:
            return conn.execute("SELECT d.state, d.reason, d.global_id::text FROM sync.documents d"
                                " JOIN sync.xref x USING (global_id) WHERE x.crm_id = %s", (deal,)).fetchone()

    wait_for(lambda: (state() or [None])[0] == "linked", 60, 0.3, "the order recorded as created")
    with sync.connect("crm") as crm:
        crm.execute("UPDATE opportunity_lines SET quantity = 5 WHERE opportunity_id = %s", (deal,))
    flagged = wait_for(lambda: (s := state()) and s[0] == "diverged" and s, 60, 0.3, "the edit flagged")
    assert order_no in flagged[1] and "change it there" in flagged[1]
    assert "line 1 qty 2.000 → 5.000" in flagged[1] and f"{erp_of(sync).total_column} " in flagged[1], flagged[1]
    assert deal in _cli(sync, "documents", "--diverged")
    assert one_order(sync, cust_no, "the order, unchanged") == order
    assert "accepted" in _cli(sync, "documents", "--accept", flagged[2])
    assert state()[0] == "linked"
    with sync.connect("crm") as crm:  # reopened after acceptance: flagged again
        crm.execute("UPDATE opportunities SET stage = 'negotiation' WHERE id = %s", (deal,))
    reopened = wait_for(lambda: (s := state()) and s[0] == "diverged" and s, 60, 0.3, "the reopened deal flagged")
    assert "stage negotiation" in reopened[1]
    assert len(order_of(sync, cust_no)) == 1


def test_compare_finds_orders_and_rollups_that_disagree_with_the_crm(sync: Harness) -> None:
    """Behind the sync's back: an order line's quantity, a deal's fulfilment status, an order deleted."""
    import json
    import subprocess

    def documents() -> dict[str, dict[str, Any]]:
        done = subprocess.run(sync.cli("compare", "--format", "json"), capture_output=True, text=True, check=False,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return {r["rule"]: r for r in json.loads(done.stdout) if "rule" in r}

    deals = []
    for _ in range(3):
        account, cust_no = customer(sync)
        sku = skus(sync, 1)[0]
        deal = win_deal(sync, account, [(sku, "2", "10.00")])
        order_no = one_order(sync, cust_no, "the order").key
        wait_for(lambda d=deal, o=order_no: deal_status(sync, d) == (o, "ordered"), 60, 0.3, "the rollup")
        deals.append((deal, order_no))
    before = documents()
    assert before["sales_order"]["categories"]["equal"] >= 3 and before["fulfilment"]["categories"]["equal"] >= 3
    drifted = {d["crm"] for d in before["sales_order"]["differences"]}
    assert not drifted & {d for d, _ in deals}
    (line_deal, line_order), (status_deal, _), (gone_deal, gone_order) = deals
    with sync.connect("erp") as erp, sync.connect("crm") as crm:
        erp_of(sync).set_line_quantity(erp, line_order, 1, Decimal(3))
        crm.execute("UPDATE opportunities SET fulfillment_status = 'paid' WHERE id = %s", (status_deal,))
        erp_of(sync).delete_order(erp, gone_order)
    after = documents()
    orders, fulfilment = after["sales_order"], after["fulfilment"]
    by_deal = {d["crm"]: d for d in orders["differences"]}
    columns = by_deal[line_deal]["columns"]
    assert list(columns) == ["line 1 qty"] and Decimal(columns["line 1 qty"]["erp"]) == 3, columns
    assert columns["line 1 qty"]["crm"] == "2.000"
    assert "gone" in by_deal[gone_deal]["missing"]
    assert status_deal not in by_deal  # its order is as the deal says; its fulfilment status is not:
    status = next(d for d in fulfilment["differences"] if d["crm"] == status_deal)
    assert status["columns"] == {"fulfillment_status": {"erp": "ordered", "crm": "paid"}}, status
    assert not {d["crm"] for d in fulfilment["differences"]} & {line_deal, gone_deal}
    with sync.connect("crm") as crm:  # every deal in one category
        assert sum(orders["categories"].values()) == scalar(crm, "SELECT count(*) FROM opportunities")
