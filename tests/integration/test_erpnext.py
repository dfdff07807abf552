"""The second demo ERP (ERPNext-like), connected by its profiles alone, on the real stack.

Flows F1 (customers both ways, the credit limit in a child row, keys from a naming series, stamped
`modified`), F4 (stock summed over warehouses), F2 (a won deal -> a sales order in yuan, lines
referencing items by lookup, credit check) and F3 (fulfilment and receivables back).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.local.harness import (
    REPO,
    Harness,
    running,
    scalar,
    wait_for,
    wait_for_capture,
    wait_for_identity,
    win_deal,
)

pytestmark = pytest.mark.integration
ERPNEXT = REPO / "schemas" / "mappings" / "erpnext"


@pytest.fixture(scope="module")
def sync() -> Iterator[Harness]:
    h = Harness(Path(tempfile.mkdtemp(prefix="crm-erp-sync-erpnext-", dir="/tmp")), erp="erpnext").start()
    h.write_config(processors={"profiles": [str(ERPNEXT / "customers.yaml"), str(ERPNEXT / "products.yaml")],
                               "documents": [str(ERPNEXT / "orders.yaml")]})
    try:
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, ("crm.public.accounts", "erp.public.tabCustomer"))
            wait_for_identity(h)
            yield h
    finally:
        h.stop()


TAKEN: set[str] = set()


def pair(h: Harness) -> tuple[str, str]:
    """A linked (CRM account, ERP customer) pair no other test used and without deals; (id, name)."""
    with h.connect("sync") as conn, h.connect("crm") as crm:
        dealing = {str(r[0]) for r in crm.execute("SELECT DISTINCT account_id FROM opportunities").fetchall()}

        def linked() -> list[tuple[str, str]]:
            return conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer' AND crm_id IS NOT"
                                " NULL AND erp_id IS NOT NULL ORDER BY erp_id").fetchall()

        pairs = wait_for(linked, 120, 0.5, "linked customers")
    account, name = next((c, e) for c, e in pairs if e not in TAKEN and c not in dealing)
    TAKEN.add(name)
    return account, name


def crm_account(h: Harness, account: str) -> dict[str, Any]:
    with h.connect("crm") as crm:
        row = crm.execute("SELECT credit_limit, email, ar_balance FROM accounts WHERE id = %s", (account,)).fetchone()
    return {"credit_limit": row[0], "email": row[1], "ar_balance": row[2]}


def set_credit_limit(h: Harness, customer: str, yuan: str) -> None:
    """As ERPNext's form does: the customer's credit-limit child row (and its `modified`)."""
    with h.connect("erp") as erp:
        erp.execute('UPDATE public."tabCustomer Credit Limit" SET credit_limit = %s, modified = now() AT TIME ZONE'
                    " 'Asia/Shanghai' WHERE parent = %s", (Decimal(yuan), customer))


def test_a_credit_limit_in_a_child_row_reaches_the_crm(sync: Harness) -> None:
    account, customer = pair(sync)
    set_credit_limit(sync, customer, "12345.67")
    wait_for(lambda: crm_account(sync, account)["credit_limit"] == Decimal("12345.67"), 90, 0.5,
             "the child row's credit limit on the CRM account")


def test_a_crm_edit_stamps_erpnexts_own_modified_columns(sync: Harness) -> None:
    account, customer = pair(sync)
    email = f"erpnext-{uuid.uuid4().hex[:6]}@example.com"
    with sync.connect("crm") as crm:
        crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (email, account))

    def stamped() -> Any:
        with sync.connect("erp") as erp:
            return erp.execute('SELECT email_id, modified_by, modified > (now() AT TIME ZONE \'Asia/Shanghai\')'
                               " - interval '10 minutes' FROM public.\"tabCustomer\" WHERE name = %s",
                               (customer,)).fetchone()

    assert wait_for(lambda: (s := stamped()) and s[0] == email and s, 90, 0.5, "the e-mail on the ERP")[1:] == (
        "crm-erp-sync", True)


def test_a_new_crm_account_becomes_an_erp_customer_named_by_its_series(sync: Harness) -> None:
    tax = f"91ERPN{uuid.uuid4().hex[:12].upper()}"
    with sync.connect("crm") as crm:
        crm.execute("INSERT INTO accounts (name, legal_name, uscc, tier, email) VALUES (%s, %s, %s, 'A', %s)",
                    ("新系列", "新系列测试有限公司", tax, "series@example.com"))

    def made() -> Any:
        with sync.connect("erp") as erp:
            return erp.execute('SELECT name, customer_name, modified_by FROM public."tabCustomer" WHERE tax_id = %s',
                               (tax,)).fetchone()

    name, legal, by = wait_for(made, 120, 0.5, "the ERP customer created")
    with sync.connect("erp") as erp:
        year = scalar(erp, "SELECT to_char(now(), 'YYYY')")
    assert re.fullmatch(rf"CUST-{year}-\d{{5}}", name) and legal == "新系列测试有限公司" and by == "crm-erp-sync"


def test_stock_summed_over_warehouses_reaches_the_crm(sync: Harness) -> None:
    with sync.connect("erp") as erp:
        item = scalar(erp, 'SELECT item_code FROM public."tabBin" GROUP BY item_code ORDER BY item_code LIMIT 1')
        erp.execute('UPDATE public."tabBin" SET actual_qty = 10, reserved_qty = 2.5 WHERE item_code = %s'
                    " AND warehouse = 'Stores - DT'", (item,))
        erp.execute('UPDATE public."tabBin" SET actual_qty = 4.25, reserved_qty = 0 WHERE item_code = %s'
                    " AND warehouse = 'Finished Goods - DT'", (item,))

    def available() -> Any:
        with sync.connect("crm") as crm:
            return scalar(crm, "SELECT available_qty FROM products WHERE code = %s", item)

    wait_for(lambda: available() == Decimal("11.750"), 90, 0.5, "10 - 2.5 + 4.25 available on the CRM")


def _item(h: Harness, n: int = 0) -> tuple[str, Decimal]:
    with h.connect("erp") as erp:
        row = erp.execute('SELECT item_code, standard_rate FROM public."tabItem" ORDER BY item_code OFFSET %s LIMIT 1',
                          (n,)).fetchone()
    return row[0], row[1]


def _order(h: Harness, customer: str) -> Any:
    with h.connect("erp") as erp:
        return erp.execute('SELECT name, status, grand_total, docstatus, modified_by FROM public."tabSales Order"'
                           " WHERE customer = %s", (customer,)).fetchall()


def test_a_won_deal_becomes_a_sales_order_in_yuan_with_its_items(sync: Harness) -> None:
    account, customer = pair(sync)
    set_credit_limit(sync, customer, "1000000")
    (sku_a, _), (sku_b, _) = _item(sync, 0), _item(sync, 1)
    deal = win_deal(sync, account, [(sku_a, "1", "2999.95"), (sku_b, "3", "0.33")])  # 2,999.95 + 0.99
    rows = wait_for(lambda: _order(sync, customer), 120, 0.5, "the sales order")
    assert len(rows) == 1
    name, status, total, docstatus, by = rows[0]
    with sync.connect("erp") as erp:
        year = scalar(erp, "SELECT to_char(now(), 'YYYY')")
        lines = erp.execute('SELECT idx, item_code, qty, rate, amount FROM public."tabSales Order Item"'
                            " WHERE parent = %s ORDER BY idx", (name,)).fetchall()
    assert re.fullmatch(rf"SAL-ORD-{year}-\d{{5}}", name), name
    assert (status, total, docstatus, by) == ("To Deliver and Bill", Decimal("3000.94"), 1, "crm-erp-sync")
    assert [(i, s, q, r, a) for i, s, q, r, a in lines] == [
        (1, sku_a, Decimal("1"), Decimal("2999.95"), Decimal("2999.95")),
        (2, sku_b, Decimal("3"), Decimal("0.33"), Decimal("0.99"))]

    def deal_row() -> Any:
        with sync.connect("crm") as crm:
            return crm.execute("SELECT erp_order_no, fulfillment_status FROM opportunities WHERE id = %s",
                               (deal,)).fetchone()

    wait_for(lambda: deal_row() == (name, "ordered"), 90, 0.5, "the order's name and status on the deal")


def test_a_deal_over_the_credit_limit_is_held(sync: Harness) -> None:
    account, customer = pair(sync)
    set_credit_limit(sync, customer, "100")
    win_deal(sync, account, [(_item(sync, 2)[0], "1", "100.01")])
    rows = wait_for(lambda: _order(sync, customer), 120, 0.5, "the held order")
    assert rows[0][1] == "On Hold"


def test_a_line_naming_an_item_the_erp_does_not_have_waits_with_the_reason(sync: Harness) -> None:
    account, customer = pair(sync)
    deal = win_deal(sync, account, [("NO-SUCH-ITEM", "1", "1.00")])

    def pending() -> Any:
        with sync.connect("sync") as conn:
            return conn.execute("SELECT d.state, d.reason FROM sync.documents d JOIN sync.xref x USING (global_id)"
                                " WHERE x.crm_id = %s", (deal,)).fetchone()

    state, reason = wait_for(pending, 90, 0.5, "the deal waiting for its item")
    assert state == "pending" and "item NO-SUCH-ITEM is not in the ERP" in reason
    assert _order(sync, customer) == []


def test_shipping_invoicing_and_paying_come_back_to_the_crm(sync: Harness) -> None:
    account, customer = pair(sync)
    set_credit_limit(sync, customer, "1000000")
    sku, _ = _item(sync, 3)
    deal = win_deal(sync, account, [(sku, "2", "50.00")])
    name = wait_for(lambda: _order(sync, customer), 120, 0.5, "the sales order")[0][0]

    def fulfilment() -> Any:
        with sync.connect("crm") as crm:
            return scalar(crm, "SELECT fulfillment_status FROM opportunities WHERE id = %s", deal)

    with sync.connect("erp", autocommit=False) as erp:  # a delivery note, as ERPNext submits it
        note = scalar(erp, 'INSERT INTO public."tabDelivery Note" (customer) VALUES (%s) RETURNING name', customer)
        erp.execute('INSERT INTO public."tabDelivery Note Item" (parent, item_code, qty, against_sales_order)'
                    " VALUES (%s, %s, 2, %s)", (note, sku, name))
        erp.commit()
    wait_for(lambda: fulfilment() == "shipped", 90, 0.5, "shipped on the deal")
    with sync.connect("erp", autocommit=False) as erp:
        invoice = scalar(erp, 'INSERT INTO public."tabSales Invoice" (customer, grand_total, outstanding_amount)'
                              " VALUES (%s, 100, 100) RETURNING name", customer)
        erp.execute('INSERT INTO public."tabSales Invoice Item" (parent, item_code, qty, amount, sales_order)'
                    " VALUES (%s, %s, 2, 100, %s)", (invoice, sku, name))
        erp.commit()
    wait_for(lambda: fulfilment() == "invoiced", 90, 0.5, "invoiced on the deal")
    wait_for(lambda: crm_account(sync, account)["ar_balance"] == Decimal("100.00"), 90, 0.5, "receivables 100")
    with sync.connect("erp", autocommit=False) as erp:  # a payment entry, and the invoice it settles
        payment = scalar(erp, 'INSERT INTO public."tabPayment Entry" (party, paid_amount) VALUES (%s, 100)'
                              " RETURNING name", customer)
        erp.execute('INSERT INTO public."tabPayment Entry Reference" (parent, reference_name, allocated_amount)'
                    " VALUES (%s, %s, 100)", (payment, invoice))
        erp.execute('UPDATE public."tabSales Invoice" SET outstanding_amount = 0, status = \'Paid\' WHERE name = %s',
                    (invoice,))
        erp.commit()
    wait_for(lambda: fulfilment() == "paid", 90, 0.5, "paid on the deal")
    wait_for(lambda: crm_account(sync, account)["ar_balance"] == Decimal("0.00"), 90, 0.5, "receivables 0")
