"""The demo's synthetic ERP rows as the second demo ERP (ERPNext-like, ``demo/erpnext.sql``) holds them. Pure.

Same companies, items, orders, shipments, invoices and payments as the first demo ERP, so the CRM
seed and the identity population stay the same; only their shape changes: naming-series keys,
amounts in yuan, the credit limit in a child row, stock per warehouse. The CRM's references to ERP
documents (a deal's ``erp_order_no``) are renamed to match.
"""

from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal
from typing import Any

from streams.local.seed import SeedData

YEAR = 2026
WAREHOUSES = ("Stores - DT", "Finished Goods - DT")
ORDER_STATUS = {10: "To Deliver and Bill", 15: "On Hold", 20: "To Deliver and Bill", 30: "To Deliver and Bill",
                40: "To Bill", 50: "Completed", 60: "Completed", 90: "Cancelled"}
CENT = Decimal("0.01")


def _yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(CENT)


def erpnext(data: SeedData) -> SeedData:
    """``data`` with its ERP tables as the ERPNext-like demo's (the CRM's order numbers renamed)."""
    erp = data.erp
    out: dict[str, list[dict[str, Any]]] = {}
    customer = {c["cust_no"]: f"CUST-{YEAR}-{n:05d}" for n, c in enumerate(erp["customers"], 1)}
    out["tabCustomer"] = [{
        "name": customer[c["cust_no"]], "creation": c["created_on"], "modified": c["modified_on"],
        "customer_name": c["full_name"], "tax_id": c["tax_no"], "mobile_no": c["contact_phone"],
        "email_id": c["email"], "primary_address": c["address"], "payment_terms": c["payment_terms"],
        "disabled": 1 if c["blocked"] else 0} for c in erp["customers"]]
    out["tabCustomer Credit Limit"] = [{
        "name": f"ccl{n:07d}", "parent": customer[c["cust_no"]], "idx": 1,
        "credit_limit": _yuan(c["credit_limit_fen"]), "modified": c["modified_on"]}
        for n, c in enumerate(erp["customers"], 1)]
    out["tabItem"] = [{
        "name": i["sku"], "item_code": i["sku"], "item_name": i["description"], "description": i["description"],
        "stock_uom": i["uom"], "standard_rate": _yuan(i["price_fen"]), "modified": i["modified_on"]}
        for i in erp["items"]]
    out["tabBin"] = []
    for n, i in enumerate(erp["items"], 1):  # on hand split over two warehouses; the sums are the demo's
        second = (i["on_hand"] / 3).quantize(Decimal("0.001"))
        for w, (actual, reserved) in enumerate(((i["on_hand"] - second, i["reserved"]), (second, Decimal(0)))):
            out["tabBin"].append({"name": f"bin{n:05d}{w}", "item_code": i["sku"], "warehouse": WAREHOUSES[w],
                                  "actual_qty": actual, "reserved_qty": reserved, "modified": i["modified_on"]})
    order = {o["order_no"]: f"SAL-ORD-{YEAR}-{n:05d}" for n, o in enumerate(erp["sales_orders"], 1)}
    customer_of = {o["order_no"]: customer[o["cust_no"]] for o in erp["sales_orders"]}
    out["tabSales Order"] = [{
        "name": order[o["order_no"]], "modified": o["modified_on"], "customer": customer[o["cust_no"]],
        "docstatus": 2 if o["status"] == 90 else 1, "transaction_date": o["order_date"], "currency": o["currency"],
        "grand_total": _yuan(o["total_fen"]), "status": ORDER_STATUS[o["status"]],
        "per_delivered": Decimal(100 if o["status"] in (40, 50, 60) else 0),
        "per_billed": Decimal(100 if o["status"] in (50, 60) else 0)} for o in erp["sales_orders"]]
    out["tabSales Order Item"] = [{
        "name": f"soi{n:07d}", "parent": order[ln["order_no"]], "idx": ln["line_no"], "item_code": ln["sku"],
        "qty": ln["qty"], "rate": _yuan(ln["price_fen"])} for n, ln in enumerate(erp["sales_order_lines"], 1)]
    first_sku: dict[str, str] = {}
    for ln in erp["sales_order_lines"]:
        first_sku.setdefault(ln["order_no"], ln["sku"])
    out["tabDelivery Note"], out["tabDelivery Note Item"] = [], []
    for n, s in enumerate(erp["shipments"], 1):
        name = f"MAT-DN-{YEAR}-{n:05d}"
        out["tabDelivery Note"].append({"name": name, "customer": customer_of[s["order_no"]], "is_return": 0,
                                        "creation": datetime.combine(s["shipped_on"], time(9)), "remarks": None,
                                        "posting_date": s["shipped_on"], "transporter_name": s["carrier"],
                                        "lr_no": s["tracking_no"], "docstatus": 1, "status": "Completed"})
        out["tabDelivery Note Item"].append({"name": f"dni{n:07d}", "parent": name, "qty": Decimal(1),
                                             "item_code": first_sku[s["order_no"]],
                                             "against_sales_order": order[s["order_no"]]})
    returned = {}  # a return: a return delivery note, a draft until the goods are back (refunded: submitted)
    for n, r in enumerate(erp["return_orders"], len(erp["shipments"]) + 1):
        name = returned[r["return_no"]] = f"MAT-DN-{YEAR}-{n:05d}"
        out["tabDelivery Note"].append({"name": name, "customer": customer_of[r["order_no"]], "is_return": 1,
                                        "creation": r["created_on"], "remarks": r["reason"],
                                        "posting_date": r["created_on"].date(), "transporter_name": None,
                                        "lr_no": None, "docstatus": 1 if r["status"] == "refunded" else 0,
                                        "status": "Completed" if r["status"] == "refunded" else "Draft"})
        out["tabDelivery Note Item"].append({"name": f"dnr{n:07d}", "parent": name, "qty": Decimal(-1),
                                             "item_code": first_sku[r["order_no"]],
                                             "against_sales_order": order[r["order_no"]]})
    invoice = {i["invoice_no"]: f"ACC-SINV-{YEAR}-{n:05d}" for n, i in enumerate(erp["invoices"], 1)}
    out["tabSales Invoice"] = [{
        "name": invoice[i["invoice_no"]], "customer": customer_of[i["order_no"]], "posting_date": i["issued_on"],
        "due_date": i["due_on"], "grand_total": _yuan(i["amount_fen"]),
        "outstanding_amount": _yuan(i["amount_fen"]) if i["status"] == "open" else Decimal(0),
        "docstatus": 2 if i["status"] == "void" else 1,
        "status": {"open": "Unpaid", "paid": "Paid", "void": "Cancelled"}[i["status"]]} for i in erp["invoices"]]
    out["tabSales Invoice Item"] = [{
        "name": f"sii{n:07d}", "parent": invoice[i["invoice_no"]], "item_code": first_sku[i["order_no"]],
        "amount": _yuan(i["amount_fen"]), "sales_order": order[i["order_no"]]}
        for n, i in enumerate(erp["invoices"], 1)]
    order_of_invoice = {i["invoice_no"]: i["order_no"] for i in erp["invoices"]}
    out["tabPayment Entry"], out["tabPayment Entry Reference"] = [], []
    for n, p in enumerate(erp["payments"], 1):
        name = f"ACC-PAY-{YEAR}-{n:05d}"
        out["tabPayment Entry"].append({"name": name, "party": customer_of[order_of_invoice[p["invoice_no"]]],
                                        "paid_amount": _yuan(p["amount_fen"]), "posting_date": p["received_on"].date(),
                                        "creation": p["received_on"]})
        out["tabPayment Entry Reference"].append({"name": f"per{n:07d}", "parent": name,
                                                  "reference_name": invoice[p["invoice_no"]],
                                                  "allocated_amount": _yuan(p["amount_fen"])})
    out["_sequences"] = [
        {"name": "customer_series", "next": len(out["tabCustomer"]) + 1},
        {"name": "sales_order_series", "next": len(out["tabSales Order"]) + 1},
        {"name": "delivery_note_series", "next": len(out["tabDelivery Note"]) + 1},
        {"name": "sales_invoice_series", "next": len(out["tabSales Invoice"]) + 1},
        {"name": "payment_entry_series", "next": len(out["tabPayment Entry"]) + 1},
    ]
    crm = dict(data.crm)
    crm["opportunities"] = [{**o, "erp_order_no": order.get(o["erp_order_no"])} for o in data.crm["opportunities"]]
    crm["cases"] = [{**c, "erp_return_no": returned.get(c["erp_return_no"])} for c in data.crm["cases"]]
    return SeedData(crm=crm, erp=out, manifest=data.manifest)
