"""What a person does in each demo ERP, for the tests that run every flow against both.

The flows' tests act on the ERP as its users would (edit a customer, set a credit limit, ship,
invoice, take a payment, receive a return) and read it back; each demo ERP does that its own way:
the first with integer fen and plain tables, the ERPNext-like one with yuan, naming series, child
rows and application-kept ``modified`` columns. Amounts here are yuan (``Decimal``) for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from streams.local.harness import REPO, scalar

MAPPINGS = REPO / "schemas" / "mappings"
Conn = psycopg.Connection[Any]


def _table(table: str) -> sql.Composed:
    schema, _, name = table.partition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


@dataclass(frozen=True)
class Order:
    """A sales order as the tests compare it."""

    key: str
    held: bool  # credit hold
    total: Decimal  # yuan
    currency: str


class DemoErp:
    """The first demo ERP (``demo/erp.sql``): fen, sequences, plain tables."""

    name = "demo"
    profiles: ClassVar[list[Path]] = [MAPPINGS / "demo.yaml", MAPPINGS / "demo-products.yaml"]
    documents: ClassVar[list[Path]] = [MAPPINGS / "demo-orders.yaml"]
    customer_table, customer_key = "public.customers", "cust_no"
    item_table = "public.items"
    order_tables = ("public.sales_orders", "public.sales_order_lines")
    columns: ClassVar[dict[str, str]] = {"legal_name": "full_name", "tax_id": "tax_no", "phone": "contact_phone",
                                         "email": "email", "address": "address"}
    credit_limit_written = True  # the sync writes the credit limit of a customer it creates
    total_column = "total_fen"  # the order's total, as a diverged document names it
    STAMP: ClassVar[list[str]] = []  # what the ERP's own application sets on every edit of a document

    def _stamped(self, assignments: list[sql.Composable]) -> sql.Composable:
        return sql.SQL(", ").join([*assignments, *(sql.SQL(a) for a in self.STAMP)])

    # -- customers --------------------------------------------------------------------------
    def customer(self, conn: Conn, key: str, *fields: str) -> tuple[Any, ...]:
        """The customer's values of canonical ``fields``."""
        row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            sql.SQL(", ").join(sql.Identifier(self.columns[f]) for f in fields), _table(self.customer_table),
            sql.Identifier(self.customer_key)), (key,)).fetchone()
        assert row is not None, f"no customer {key}"
        return tuple(row)

    def update_customer(self, conn: Conn, key: str, **values: Any) -> None:
        """Edit canonical fields of a customer, as its form would."""
        conn.execute(sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
            _table(self.customer_table),
            self._stamped([sql.SQL("{} = %s").format(sql.Identifier(self.columns[f])) for f in values]),
            sql.Identifier(self.customer_key)), (*values.values(), key))

    def credit_limit(self, conn: Conn, key: str) -> Decimal:
        """The customer's credit limit, yuan."""
        return Decimal(scalar(conn, "SELECT credit_limit_fen FROM customers WHERE cust_no = %s", key)) / 100

    def set_credit(self, conn: Conn, key: str, limit: Decimal | None = None, blocked: bool | None = None) -> None:
        """Set the credit limit (yuan) and/or block the customer."""
        if limit is not None:
            conn.execute("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s", (int(limit * 100), key))
        if blocked is not None:
            conn.execute("UPDATE customers SET blocked = %s WHERE cust_no = %s", (blocked, key))

    def insert_customer(self, conn: Conn, legal_name: str, email: str) -> str:
        """A customer keyed in by hand; its key."""
        return str(scalar(conn, "INSERT INTO customers (full_name, email) VALUES (%s, %s) RETURNING cust_no",
                          legal_name, email))

    def customers_named(self, conn: Conn, legal_name: str) -> list[tuple[str, str]]:
        """(key, e-mail) of each customer with this legal name."""
        return [(r[0], r[1]) for r in conn.execute("SELECT cust_no, email FROM customers WHERE full_name = %s",
                                                    (legal_name,)).fetchall()]

    def last_customer(self, conn: Conn) -> str:
        """The highest key (new ones come after it)."""
        return str(scalar(conn, "SELECT max(cust_no) FROM customers"))

    def customers_without_orders(self, conn: Conn) -> list[str]:
        """Customers no order references (they may be deleted)."""
        return [r[0] for r in conn.execute("SELECT cust_no FROM customers c WHERE NOT EXISTS (SELECT 1 FROM"
                                           " sales_orders o WHERE o.cust_no = c.cust_no) ORDER BY cust_no")]

    def delete_customer(self, conn: Conn, key: str) -> None:
        """Delete a customer (one without orders)."""
        conn.execute("DELETE FROM customers WHERE cust_no = %s", (key,))

    # -- items --------------------------------------------------------------------------------
    def items(self, conn: Conn, n: int, offset: int = 0) -> list[str]:
        """The first ``n`` item codes (after ``offset``)."""
        return [r[0] for r in conn.execute("SELECT sku FROM items ORDER BY sku LIMIT %s OFFSET %s", (n, offset))]

    def item_count(self, conn: Conn) -> int:
        """How many items."""
        return int(scalar(conn, "SELECT count(*) FROM items"))

    def set_item(self, conn: Conn, code: str, price: Decimal | None = None, on_hand: Decimal | None = None,
                 reserved: Decimal | None = None) -> None:
        """Change an item's price (yuan) and its stock (on hand and reserved, all warehouses)."""
        for column, value in (("price_fen", None if price is None else int(price * 100)), ("on_hand", on_hand),
                              ("reserved", reserved)):
            if value is not None:
                conn.execute(sql.SQL("UPDATE items SET {} = %s WHERE sku = %s").format(sql.Identifier(column)),
                             (value, code))

    def available(self, conn: Conn, code: str) -> Decimal:
        """On hand - reserved."""
        return Decimal(scalar(conn, "SELECT on_hand - reserved FROM items WHERE sku = %s", code))

    def insert_item(self, conn: Conn, code: str, description: str, uom: str, price: Decimal, on_hand: Decimal,
                    reserved: Decimal) -> None:
        """A new item."""
        conn.execute("INSERT INTO items (sku, description, uom, price_fen, on_hand, reserved)"
                     " VALUES (%s, %s, %s, %s, %s, %s)", (code, description, uom, int(price * 100), on_hand, reserved))

    # -- orders -------------------------------------------------------------------------------
    def orders(self, conn: Conn, customer: str) -> list[Order]:
        """The customer's sales orders."""
        return [Order(r[0], r[1] == 15, Decimal(r[2]) / 100, r[3]) for r in conn.execute(
            "SELECT order_no, status, total_fen, currency FROM sales_orders WHERE cust_no = %s", (customer,))]

    def all_orders(self, conn: Conn) -> set[str]:
        """Every order's key."""
        return {r[0] for r in conn.execute("SELECT order_no FROM sales_orders")}

    def order_payload(self, customer: str, item: str) -> dict[str, Any]:
        """A create command's document: one line of 5 x 1.00 yuan (as the sales_order rule plans it)."""
        return {"header": {"cust_no": customer, "currency": "CNY", "total_fen": 500},
                "lines": [{"sku": item, "qty": "5", "price_fen": 100}], "total": 500}

    def lines(self, conn: Conn, order: str) -> list[tuple[int, str, Decimal, Decimal]]:
        """(number, item, quantity, unit price in yuan) of each line, in number order."""
        return [(r[0], r[1], r[2], Decimal(r[3]) / 100) for r in conn.execute(
            "SELECT line_no, sku, qty, price_fen FROM sales_order_lines WHERE order_no = %s ORDER BY line_no",
            (order,))]

    def set_line_quantity(self, conn: Conn, order: str, number: int, qty: Decimal) -> None:
        """Edit one line's quantity, as a person in the ERP would."""
        conn.execute("UPDATE sales_order_lines SET qty = %s WHERE order_no = %s AND line_no = %s",
                     (qty, order, number))

    def delete_order(self, conn: Conn, order: str) -> None:
        """Delete an order and its lines (behind the sync's back)."""
        conn.execute("DELETE FROM sales_order_lines WHERE order_no = %s", (order,))
        conn.execute("DELETE FROM sales_orders WHERE order_no = %s", (order,))

    def ship(self, conn: Conn, order: str, carrier: str, tracking: str) -> str:
        """Ship the order; the shipment's key."""
        return str(scalar(conn, "INSERT INTO shipments (order_no, shipped_on, carrier, tracking_no) VALUES"
                                " (%s, current_date, %s, %s) RETURNING shipment_no", order, carrier, tracking))

    def invoice(self, conn: Conn, order: str, amount: Decimal) -> str:
        """Invoice the order; the invoice's key."""
        return str(scalar(conn, "INSERT INTO invoices (order_no, amount_fen, issued_on, due_on)"
                                " VALUES (%s, %s, current_date, current_date + 30) RETURNING invoice_no",
                          order, int(amount * 100)))

    def pay(self, conn: Conn, invoice: str, amount: Decimal, at: str) -> None:
        """A payment of ``amount`` yuan against the invoice, received at local time ``at``."""
        conn.execute("INSERT INTO payments (invoice_no, amount_fen, received_on) VALUES (%s, %s, %s)",
                     (invoice, int(amount * 100), at))

    def returns(self, conn: Conn, order: str) -> list[tuple[str, str, bool]]:
        """(key, reason, refunded) of the order's returns."""
        return [(r[0], r[1], r[2] == "refunded") for r in conn.execute(
            "SELECT return_no, reason, status FROM return_orders WHERE order_no = %s", (order,))]

    def refund(self, conn: Conn, key: str) -> None:
        """The returned goods are back and refunded."""
        conn.execute("UPDATE return_orders SET status = 'refunded' WHERE return_no = %s", (key,))


class ErpNextDemo(DemoErp):
    """The ERPNext-like demo ERP (``demo/erpnext.sql``): yuan, naming series, child rows, its own ``modified``."""

    name = "erpnext"
    profiles: ClassVar[list[Path]] = [MAPPINGS / "erpnext" / "customers.yaml", MAPPINGS / "erpnext" / "products.yaml"]
    documents: ClassVar[list[Path]] = [MAPPINGS / "erpnext" / "orders.yaml"]
    customer_table, customer_key = "public.tabCustomer", "name"
    item_table = "public.tabItem"
    order_tables = ("public.tabSales Order", "public.tabSales Order Item")
    columns: ClassVar[dict[str, str]] = {"legal_name": "customer_name", "tax_id": "tax_id", "phone": "mobile_no",
                                         "email": "email_id", "address": "primary_address"}
    credit_limit_written = False  # a child row the sync reads and never writes
    total_column = "grand_total"
    STAMP: ClassVar[list[str]] = ["modified = now() AT TIME ZONE 'Asia/Shanghai'", "modified_by = 'Administrator'"]

    def credit_limit(self, conn: Conn, key: str) -> Decimal:
        return Decimal(scalar(conn, 'SELECT coalesce((SELECT credit_limit FROM "tabCustomer Credit Limit"'
                                    " WHERE parent = %s ORDER BY idx LIMIT 1), 0)", key)).quantize(Decimal("0.01"))

    def set_credit(self, conn: Conn, key: str, limit: Decimal | None = None, blocked: bool | None = None) -> None:
        if limit is not None:
            updated = conn.execute('UPDATE "tabCustomer Credit Limit" SET credit_limit = %s, modified = now() AT TIME'
                                   " ZONE 'Asia/Shanghai' WHERE parent = %s", (limit, key)).rowcount
            if not updated:
                conn.execute('INSERT INTO "tabCustomer Credit Limit" (parent, credit_limit) VALUES (%s, %s)',
                             (key, limit))
        if blocked is not None:
            conn.execute(sql.SQL('UPDATE "tabCustomer" SET {} WHERE name = %s').format(
                self._stamped([sql.SQL("disabled = %s")])), (int(blocked), key))

    def insert_customer(self, conn: Conn, legal_name: str, email: str) -> str:
        return str(scalar(conn, 'INSERT INTO "tabCustomer" (customer_name, email_id) VALUES (%s, %s) RETURNING name',
                          legal_name, email))

    def customers_named(self, conn: Conn, legal_name: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in conn.execute('SELECT name, email_id FROM "tabCustomer"'
                                                    " WHERE customer_name = %s", (legal_name,)).fetchall()]

    def last_customer(self, conn: Conn) -> str:
        return str(scalar(conn, 'SELECT max(name) FROM "tabCustomer"'))

    def customers_without_orders(self, conn: Conn) -> list[str]:
        return [r[0] for r in conn.execute(
            'SELECT name FROM "tabCustomer" c WHERE NOT EXISTS (SELECT 1 FROM "tabSales Order" o'
            " WHERE o.customer = c.name) AND NOT EXISTS (SELECT 1 FROM \"tabDelivery Note\" n"
            " WHERE n.customer = c.name) ORDER BY name")]

    def delete_customer(self, conn: Conn, key: str) -> None:
        with conn.transaction():  # the child rows go with it, as ERPNext deletes a document
            conn.execute('DELETE FROM "tabCustomer Credit Limit" WHERE parent = %s', (key,))
            conn.execute('DELETE FROM "tabCustomer" WHERE name = %s', (key,))

    def items(self, conn: Conn, n: int, offset: int = 0) -> list[str]:
        return [r[0] for r in conn.execute('SELECT item_code FROM "tabItem" ORDER BY item_code LIMIT %s OFFSET %s',
                                           (n, offset))]

    def item_count(self, conn: Conn) -> int:
        return int(scalar(conn, 'SELECT count(*) FROM "tabItem"'))

    def set_item(self, conn: Conn, code: str, price: Decimal | None = None, on_hand: Decimal | None = None,
                 reserved: Decimal | None = None) -> None:
        if price is not None:
            conn.execute(sql.SQL('UPDATE "tabItem" SET {} WHERE item_code = %s').format(
                self._stamped([sql.SQL("standard_rate = %s")])), (price, code))
        if on_hand is not None or reserved is not None:  # all of it in the first warehouse, none in the others
            first = scalar(conn, 'SELECT min(warehouse) FROM "tabBin" WHERE item_code = %s', code)
            for column, value in (("actual_qty", on_hand), ("reserved_qty", reserved)):
                if value is not None:
                    conn.execute(sql.SQL('UPDATE "tabBin" SET {} = CASE WHEN warehouse = %s THEN %s ELSE 0 END,'
                                         " modified = now() AT TIME ZONE 'Asia/Shanghai' WHERE item_code = %s"
                                         ).format(sql.Identifier(column)), (first, value, code))

    def available(self, conn: Conn, code: str) -> Decimal:
        return Decimal(scalar(conn, 'SELECT coalesce(sum(actual_qty - reserved_qty), 0) FROM "tabBin"'
                                    " WHERE item_code = %s", code)).quantize(Decimal("0.001"))

    def insert_item(self, conn: Conn, code: str, description: str, uom: str, price: Decimal, on_hand: Decimal,
                    reserved: Decimal) -> None:
        with conn.transaction():
            conn.execute('INSERT INTO "tabItem" (name, item_code, item_name, description, stock_uom, standard_rate)'
                         " VALUES (%s, %s, %s, %s, %s, %s)", (code, code, description, description, uom, price))
            conn.execute('INSERT INTO "tabBin" (item_code, warehouse, actual_qty, reserved_qty)'
                         " VALUES (%s, 'Stores - DT', %s, %s)", (code, on_hand, reserved))

    def orders(self, conn: Conn, customer: str) -> list[Order]:
        return [Order(r[0], r[1] == "On Hold", Decimal(r[2]).quantize(Decimal("0.01")), r[3])
                for r in conn.execute('SELECT name, status, grand_total, currency FROM "tabSales Order"'
                                      " WHERE customer = %s", (customer,))]

    def all_orders(self, conn: Conn) -> set[str]:
        return {r[0] for r in conn.execute('SELECT name FROM "tabSales Order"')}

    def order_payload(self, customer: str, item: str) -> dict[str, Any]:
        return {"header": {"customer": customer, "currency": "CNY", "grand_total": "5.00"},
                "lines": [{"item_code": item, "qty": "5", "rate": "1.00"}], "total": "5.00"}

    def lines(self, conn: Conn, order: str) -> list[tuple[int, str, Decimal, Decimal]]:
        return [(r[0], r[1], r[2].quantize(Decimal("0.001")), r[3].quantize(Decimal("0.01"))) for r in conn.execute(
            'SELECT idx, item_code, qty, rate FROM "tabSales Order Item" WHERE parent = %s ORDER BY idx', (order,))]

    def set_line_quantity(self, conn: Conn, order: str, number: int, qty: Decimal) -> None:
        conn.execute('UPDATE "tabSales Order Item" SET qty = %s WHERE parent = %s AND idx = %s', (qty, order, number))

    def delete_order(self, conn: Conn, order: str) -> None:
        with conn.transaction():
            conn.execute('DELETE FROM "tabSales Order Item" WHERE parent = %s', (order,))
            conn.execute('DELETE FROM "tabSales Order" WHERE name = %s', (order,))

    def _customer_of(self, conn: Conn, order: str) -> str:
        return str(scalar(conn, 'SELECT customer FROM "tabSales Order" WHERE name = %s', order))

    def ship(self, conn: Conn, order: str, carrier: str, tracking: str) -> str:
        with conn.transaction():  # a delivery note and its item row, submitted together
            note = str(scalar(conn, 'INSERT INTO "tabDelivery Note" (customer, transporter_name, lr_no)'
                                    " VALUES (%s, %s, %s) RETURNING name", self._customer_of(conn, order), carrier,
                              tracking))
            conn.execute('INSERT INTO "tabDelivery Note Item" (parent, item_code, qty, against_sales_order)'
                         ' SELECT %s, item_code, qty, parent FROM "tabSales Order Item" WHERE parent = %s'
                         " ORDER BY idx LIMIT 1", (note, order))
        return note

    def invoice(self, conn: Conn, order: str, amount: Decimal) -> str:
        with conn.transaction():
            invoice = str(scalar(conn, 'INSERT INTO "tabSales Invoice" (customer, grand_total, outstanding_amount)'
                                       " VALUES (%s, %s, %s) RETURNING name", self._customer_of(conn, order), amount,
                                 amount))
            conn.execute('INSERT INTO "tabSales Invoice Item" (parent, amount, sales_order) VALUES (%s, %s, %s)',
                         (invoice, amount, order))
        return invoice

    def pay(self, conn: Conn, invoice: str, amount: Decimal, at: str) -> None:
        with conn.transaction():  # the payment entry, its reference, and the invoice's outstanding amount
            customer = scalar(conn, 'SELECT customer FROM "tabSales Invoice" WHERE name = %s', invoice)
            payment = scalar(conn, 'INSERT INTO "tabPayment Entry" (party, paid_amount, posting_date, creation)'
                                   " VALUES (%s, %s, %s::timestamp::date, %s) RETURNING name", customer, amount, at, at)
            conn.execute('INSERT INTO "tabPayment Entry Reference" (parent, reference_name, allocated_amount)'
                         " VALUES (%s, %s, %s)", (payment, invoice, amount))
            conn.execute('UPDATE "tabSales Invoice" SET outstanding_amount = outstanding_amount - %s,'
                         " status = CASE WHEN outstanding_amount - %s <= 0 THEN 'Paid' ELSE 'Partly Paid' END,"
                         " modified = now() AT TIME ZONE 'Asia/Shanghai' WHERE name = %s", (amount, amount, invoice))

    def returns(self, conn: Conn, order: str) -> list[tuple[str, str, bool]]:
        return [(r[0], r[1], r[2] == 1) for r in conn.execute(
            'SELECT n.name, n.remarks, n.docstatus FROM "tabDelivery Note" n WHERE n.is_return = 1 AND EXISTS'
            ' (SELECT 1 FROM "tabDelivery Note Item" d WHERE d.parent = n.name AND d.against_sales_order = %s)',
            (order,))]

    def refund(self, conn: Conn, key: str) -> None:
        conn.execute(sql.SQL('UPDATE "tabDelivery Note" SET {} WHERE name = %s').format(
            self._stamped([sql.SQL("docstatus = 1, status = 'Completed'")])), (key,))


ERPS: dict[str, DemoErp] = {"demo": DemoErp(), "erpnext": ErpNextDemo()}


def profile_paths(erp: DemoErp, documents: bool = True) -> dict[str, list[str]]:
    """The ``processors`` settings of ``erp``'s profiles."""
    return {"profiles": [str(p) for p in erp.profiles],
            "documents": [str(p) for p in erp.documents] if documents else []}
