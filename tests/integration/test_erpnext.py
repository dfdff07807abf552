"""What only the second demo ERP (ERPNext-like) has, on the real stack.

The flows F1-F5 run against both demo ERPs in test_customer_sync, test_product_sync and
test_order_to_cash; here: keys from its naming series, its own `modified` columns stamped by the
sync's writes, and stock summed over several warehouses.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from streams.local.erps import ERPS, profile_paths
from streams.local.harness import (
    Harness,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync(failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_harness("erpnext", failures, erp="erpnext") as h:
        h.write_config(processors=profile_paths(ERPS["erpnext"], documents=False))
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, ("crm.public.accounts", "erp.public.tabCustomer"))
            wait_for_identity(h)
            yield h


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
