"""Flow F4 on the real stack: ERP stock and price reach the CRM's products (second profile, same worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from streams.local.erps import DemoErp
from streams.local.harness import (
    Harness,
    TopicReader,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.mapping.profile import load_profiles
from streams.topics import raw_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync(demo_erp: DemoErp, failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_harness(f"products-{demo_erp.name}", failures, erp=demo_erp.name) as h:
        h.write_config(processors={"profiles": [str(p) for p in demo_erp.profiles]})
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, [raw_topic("erp", demo_erp.item_table)])
            wait_for_identity(h)
            with h.connect("erp") as erp, h.connect("sync") as conn:
                items = demo_erp.item_count(erp)
                wait_for(lambda: scalar(conn, "SELECT count(*) FROM sync.xref WHERE entity = 'product'"
                                              " AND linked_by = 'exact'") == items, 120, 0.5,
                         "every item linked to its product by code")
            yield h


def _crm_product(h: Harness, code: str) -> tuple[Decimal, Decimal]:
    with h.connect("crm") as crm:
        row = crm.execute("SELECT list_price, available_qty FROM products WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_stock_and_price_reach_the_crm_exactly(sync: Harness, demo_erp: DemoErp) -> None:
    with sync.connect("erp") as erp:
        sku = demo_erp.items(erp, 1)[0]
        demo_erp.set_item(erp, sku, price=Decimal("1234.56"), on_hand=Decimal("1000.250"), reserved=Decimal("10.125"))
    wait_for(lambda: _crm_product(sync, sku) == (Decimal("1234.56"), Decimal("990.125")), 60, 0.3,
             "the new price and on hand - reserved in the CRM")
    with sync.connect("erp") as erp:
        demo_erp.set_item(erp, sku, reserved=Decimal("990.125"))  # reserved alone changes
    wait_for(lambda: _crm_product(sync, sku) == (Decimal("1234.56"), Decimal("10.125")), 60, 0.3,
             "availability after a reservation")


def test_a_crm_edit_of_stock_is_reverted_to_the_erp_value(sync: Harness, demo_erp: DemoErp) -> None:
    with sync.connect("erp") as erp:
        sku = demo_erp.items(erp, 1, offset=1)[0]
        available = demo_erp.available(erp, sku)
    wait_for(lambda: _crm_product(sync, sku)[1] == available, 60, 0.3, "the product in agreement")
    with sync.connect("crm") as crm:
        crm.execute("UPDATE products SET available_qty = 999999 WHERE code = %s", (sku,))
    wait_for(lambda: _crm_product(sync, sku)[1] == available, 60, 0.3, "the CRM edit reverted")
    with sync.connect("sync") as conn:
        assert scalar(conn, "SELECT count(*) FROM sync.conflicts WHERE entity = 'product'"
                            " AND field = 'available_qty_milli' AND kind = 'non_owner_edit'") >= 1


def test_a_new_erp_item_joins_the_crm_catalogue_and_the_canonical_topic(sync: Harness, demo_erp: DemoErp) -> None:
    with sync.connect("erp") as erp:
        demo_erp.insert_item(erp, "NEW-001", "新型号减速机", "SET", Decimal("8800.00"), Decimal("12.000"),
                             Decimal("2.500"))
    with sync.connect("crm") as crm:
        wait_for(lambda: crm.execute("SELECT name, list_price, available_qty FROM products WHERE code = 'NEW-001'"
                                     ).fetchall(), 60, 0.3, "the new item in the CRM")
        assert crm.execute("SELECT name, list_price, available_qty FROM products WHERE code = 'NEW-001'"
                           ).fetchall() == [("新型号减速机", Decimal("8800.00"), Decimal("9.500"))]
    reader = TopicReader(sync.bootstrap, sync.registry_url, ["canonical.product.v1"])
    try:
        found = reader.wait(lambda rs: [r["value"] for r in rs if r["value"]["code"] == "NEW-001"
                                        and r["value"]["crm_id"]], 60, "the new product on canonical.product.v1")
    finally:
        reader.close()
    record = found[-1]
    assert (record["available_qty_milli"], record["list_price_fen"], record["uom"]) == (9500, 880000, "SET")
    product = next(p for p in load_profiles(demo_erp.profiles) if p.entity == "product")
    read = {product.table_of("crm"), product.table_of("erp"), *product.watched("erp")}
    assert record["metadata"]["source_table"] in read  # the change that caused it: the item, a bin, the product
