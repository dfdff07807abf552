"""Synthetic demo data for the CRM and ERP: deterministic, realistic in shape, no real people.

The customer population is built to exercise identity resolution (see ``SeedManifest``):
pairs that match by tax number, pairs that match only by normalised name, pairs that only look
alike, ambiguous names, and records present on one side only ("CRM has 3000, ERP 2100").
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

SHANGHAI = ZoneInfo("Asia/Shanghai")
SEED_EPOCH = datetime(2026, 1, 5, 1, 30, tzinfo=UTC)

CITIES = ["北京", "上海", "深圳", "广州", "杭州", "苏州", "南京", "成都", "武汉", "西安", "天津", "重庆",
          "青岛", "宁波", "厦门", "长沙", "合肥", "郑州", "东莞", "佛山"]
REGION_CODES = ["110105", "310115", "440305", "440106", "330106", "320505", "320106", "510107",
                "420106", "610113", "120116", "500112", "370212", "330212", "350206", "430104",
                "340104", "410105", "441900", "440604"]
CORES = ["华信", "中科", "瑞丰", "金盛", "恒达", "东方", "天成", "鼎力", "宏远", "博创", "永安", "新元",
         "泰和", "盛世", "鸿运", "安达", "嘉诚", "长城", "海昌", "晨光", "汇通", "远景", "联合", "正泰",
         "立信", "德胜", "锦程", "华润", "百川", "凯旋", "明阳", "万通", "启航", "星辰", "蓝海", "光华"]
TRADES = [("科技", "软件与信息技术"), ("电子", "电子制造"), ("机械", "装备制造"), ("化工", "化工"),
          ("贸易", "批发零售"), ("物流", "交通物流"), ("食品", "食品饮料"), ("医药", "医药健康"),
          ("新材料", "新材料"), ("能源", "能源"), ("精密", "装备制造"), ("纺织", "纺织服装")]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"
OWNERS = ["sales.east", "sales.south", "sales.north", "sales.west", "key.accounts"]
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
PRODUCTS = [("伺服电机", "台", 1280000), ("变频器", "台", 560000), ("PLC控制器", "套", 890000),
            ("工业相机", "台", 1450000), ("传感器模组", "个", 38000), ("减速机", "台", 420000),
            ("触摸屏", "台", 260000), ("电缆组件", "米", 1250), ("气缸", "个", 45000),
            ("直线导轨", "根", 98000), ("轴承", "个", 6800), ("继电器", "个", 2350)]


@dataclass
class SeedManifest:
    """What the customer population was built to contain (for identity tests and the demo)."""

    exact_pairs: int = 0
    name_pairs: int = 0
    fuzzy_pairs: int = 0
    ambiguous_crm: int = 0
    ambiguous_erp: int = 0
    crm_only: int = 0
    erp_only: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counts by kind."""
        return dict(self.__dict__)


@dataclass
class SeedData:
    """Rows to insert, by database and table, in dependency order."""

    crm: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    erp: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    manifest: SeedManifest = field(default_factory=SeedManifest)


def _uscc(rng: random.Random, region: str) -> str:
    body = "91" + region + "".join(rng.choice(USCC_ALPHABET) for _ in range(9))
    return body + rng.choice(USCC_ALPHABET)


def _phone(rng: random.Random) -> str:
    # 0xx-5550xxxx: a reserved-looking pattern, not a real subscriber range.
    return f"0{rng.randint(10, 99)}-5550{rng.randint(0, 9999):04d}"


def _person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))


def _local(ts: datetime) -> datetime:
    """Asia/Shanghai wall-clock time without zone, as the ERP stores it."""
    return ts.astimezone(SHANGHAI).replace(tzinfo=None)


@dataclass
class _Company:
    short: str
    legal: str
    city_idx: int
    industry: str


# Distinct short names the cores and trades make (36 x 35 x 12 = 15,120); beyond this many
# companies a name is told apart by a number, as registries do (a random pick would seldom be new).
UNNUMBERED = 12_000


def _companies(rng: random.Random, count: int) -> list[_Company]:
    seen: set[str] = set()
    out: list[_Company] = []
    while len(out) < count:
        city_idx = rng.randrange(len(CITIES))
        trade, industry = rng.choice(TRADES)
        core = rng.choice(CORES) + rng.choice(CORES)[0]
        short = core + trade
        if short in seen and len(out) >= UNNUMBERED:
            short = f"{core}{len(out)}{trade}"
        if short in seen:
            continue
        seen.add(short)
        suffix = rng.choice(["有限公司", "股份有限公司", "有限责任公司"])
        legal = CITIES[city_idx] + short + suffix if rng.random() < 0.6 else short + suffix
        out.append(_Company(short, legal, city_idx, industry))
    return out


def demo_data(accounts: int, erp: str = "demo") -> SeedData:
    """The demo rows for the chosen demo ERP (``demo`` or ``erpnext``)."""
    data = generate(accounts)
    if erp == "erpnext":
        from streams.local.seed_erpnext import erpnext

        return erpnext(data)
    return data


def generate(accounts: int = 300, seed: int = 20260105) -> SeedData:
    """Build the demo rows. Pure: the same arguments give the same rows."""
    rng = random.Random(seed)
    data = SeedData()
    m = data.manifest
    crm_accounts: list[dict[str, Any]] = []
    erp_customers: list[dict[str, Any]] = []
    cust_seq = 100001
    companies = _companies(rng, accounts)
    # Shares of the population (of `accounts` companies).
    n_exact = accounts * 50 // 100
    n_name = accounts * 15 // 100
    n_fuzzy = accounts * 5 // 100
    n_ambiguous = accounts * 3 // 100
    n_crm_only = accounts * 17 // 100
    link_of: dict[str, str] = {}  # crm id -> cust_no, for orders of linked pairs

    def crm_row(c: _Company, uscc: str | None, i: int) -> dict[str, Any]:
        created = SEED_EPOCH - timedelta(days=rng.randint(30, 900))
        return {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "name": c.short,
            "legal_name": c.legal,
            "uscc": uscc,
            "industry": c.industry,
            "tier": rng.choices(["A", "B", "C"], weights=[2, 3, 5])[0],
            "phone": _phone(rng),
            "email": f"contact{i:04d}@example.com",
            "address": f"{CITIES[c.city_idx]}市示范路{rng.randint(1, 999)}号",
            "owner": rng.choice(OWNERS),
            "credit_limit": Decimal(rng.choice([50000, 100000, 200000, 500000, 1000000])).quantize(Decimal("0.01")),
            "ar_balance": Decimal("0.00"),
            "status": "active" if rng.random() < 0.93 else "inactive",
            "created_at": created,
            "updated_at": created + timedelta(days=rng.randint(0, 29)),
        }

    def erp_row(c: _Company, tax_no: str | None, i: int, full_name: str | None = None) -> dict[str, Any]:
        nonlocal cust_seq
        created = SEED_EPOCH - timedelta(days=rng.randint(30, 900))
        row = {
            "cust_no": f"C{cust_seq:06d}",
            "full_name": full_name or c.legal,
            "tax_no": tax_no,
            "contact_phone": _phone(rng),
            "email": f"contact{i:04d}@example.com",
            "address": f"{CITIES[c.city_idx]}市示范路{rng.randint(1, 999)}号",
            "credit_limit_fen": rng.choice([50000, 100000, 200000, 500000, 1000000]) * 100,
            "payment_terms": rng.choice(["NET30", "NET30", "NET60", "COD"]),
            "blocked": rng.random() < 0.04,
            "created_on": _local(created),
            "modified_on": _local(created + timedelta(days=rng.randint(0, 29))),
        }
        cust_seq += 1
        return row

    for i, c in enumerate(companies):
        region = REGION_CODES[c.city_idx]
        if i < n_exact:
            code = _uscc(rng, region)
            crm, erp = crm_row(c, code, i), erp_row(c, code, i)
            crm_accounts.append(crm)
            erp_customers.append(erp)
            link_of[str(crm["id"])] = erp["cust_no"]
            m.exact_pairs += 1
        elif i < n_exact + n_name:
            # Same company, no tax number in the CRM, legal form written differently.
            other = c.legal.replace("股份有限公司", "有限公司") if "股份" in c.legal else c.legal.replace(
                "有限公司", "股份有限公司")
            crm, erp = crm_row(c, None, i), erp_row(c, _uscc(rng, region), i, full_name=other)
            crm_accounts.append(crm)
            erp_customers.append(erp)
            link_of[str(crm["id"])] = erp["cust_no"]
            m.name_pairs += 1
        elif i < n_exact + n_name + n_fuzzy:
            # Same company, typed differently: the city moved into brackets, full-width.
            city = CITIES[c.city_idx]
            bare = c.legal.removeprefix(city)
            form = next(f for f in ("股份有限公司", "有限责任公司", "有限公司") if bare.endswith(f))
            other = f"{bare.removesuffix(form)}（{city}）{form}"
            crm, erp = crm_row(c, None, i), erp_row(c, None, i, full_name=other)
            crm_accounts.append(crm)
            erp_customers.append(erp)
            m.fuzzy_pairs += 1
        elif i < n_exact + n_name + n_fuzzy + n_ambiguous:
            # One CRM account, two ERP branches of the same name: a person must decide.
            crm = crm_row(c, None, i)
            crm["legal_name"] = c.short + "有限公司"
            crm_accounts.append(crm)
            m.ambiguous_crm += 1
            for branch in rng.sample(CITIES, 2):
                erp_customers.append(erp_row(c, None, i, full_name=f"{c.short}（{branch}）有限公司"))
                m.ambiguous_erp += 1
        elif i < n_exact + n_name + n_fuzzy + n_ambiguous + n_crm_only:
            crm_accounts.append(crm_row(c, _uscc(rng, region) if rng.random() < 0.5 else None, i))
            m.crm_only += 1
        else:
            erp_customers.append(erp_row(c, _uscc(rng, region), i))
            m.erp_only += 1

    data.crm["accounts"] = crm_accounts
    data.erp["customers"] = erp_customers
    data.crm["contacts"] = [
        {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "account_id": acc["id"],
            "name": _person(rng),
            "phone": _phone(rng),
            "email": f"person{n:05d}@example.com",
            "title": rng.choice(["采购经理", "总经理", "财务主管", "工程师", "运营总监"]),
            "updated_at": acc["updated_at"],
        }
        for n, acc in enumerate(a for a in crm_accounts for _ in range(rng.randint(1, 2)))
    ]
    _products(rng, data)
    _deals_and_orders(rng, data, link_of)
    return data


def _products(rng: random.Random, data: SeedData) -> None:
    items, products = [], []
    for n, (name, uom, price_fen) in enumerate(PRODUCTS):
        for variant in ("A", "B", "C"):
            sku = f"P{n + 1:03d}-{variant}"
            on_hand = Decimal(rng.randint(0, 5000)).quantize(Decimal("0.001"))
            reserved = min(on_hand, Decimal(rng.randint(0, 400))).quantize(Decimal("0.001"))
            price = price_fen + rng.randint(-5, 5) * 100
            items.append({"sku": sku, "description": f"{name}{variant}型", "uom": uom, "price_fen": price,
                          "on_hand": on_hand, "reserved": reserved,
                          "modified_on": _local(SEED_EPOCH)})
            products.append({"code": sku, "name": f"{name}{variant}型",
                             "list_price": (Decimal(price) / 100).quantize(Decimal("0.01")),
                             "available_qty": on_hand - reserved, "updated_at": SEED_EPOCH})
    data.erp["items"] = items
    data.crm["products"] = products


def _deals_and_orders(rng: random.Random, data: SeedData, link_of: dict[str, str]) -> None:
    items = data.erp["items"]
    stages = ["prospecting", "qualification", "proposal", "negotiation", "closed_won", "closed_lost"]
    statuses = [20, 30, 40, 50, 60, 90, 15]
    fulfil = {15: "credit_hold", 20: "ordered", 30: "in_production", 40: "shipped", 50: "invoiced",
              60: "paid", 90: "cancelled"}
    opps: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    order_lines: list[dict[str, Any]] = []
    shipments: list[dict[str, Any]] = []
    invoices: list[dict[str, Any]] = []
    payments: list[dict[str, Any]] = []
    returns: list[dict[str, Any]] = []
    order_seq = 1
    for acc in data.crm["accounts"]:
        for _ in range(rng.randint(0, 2)):
            opp_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            stage = rng.choice(stages)
            chosen = rng.sample(items, rng.randint(1, 3))
            opp_lines = [
                {"id": uuid.UUID(int=rng.getrandbits(128), version=4), "opportunity_id": opp_id,
                 "product_code": it["sku"], "quantity": Decimal(rng.randint(1, 20)).quantize(Decimal("0.001")),
                 "unit_price": (Decimal(it["price_fen"]) / 100).quantize(Decimal("0.01"))}
                for it in chosen
            ]
            amount = sum((ln["quantity"] * ln["unit_price"] for ln in opp_lines), Decimal(0)).quantize(
                Decimal("0.01"))
            when = SEED_EPOCH - timedelta(days=rng.randint(0, 120))
            opp: dict[str, Any] = {
                "id": opp_id, "account_id": acc["id"], "title": f"{acc['name']} {chosen[0]['description']}采购",
                "stage": stage, "amount": amount, "currency": "CNY",
                "expected_close": (when + timedelta(days=30)).date(), "erp_order_no": None,
                "fulfillment_status": None, "updated_at": when,
            }
            cust_no = link_of.get(str(acc["id"]))
            if stage == "closed_won" and cust_no:
                status = rng.choice(statuses)
                order_no = f"SO2026{order_seq:06d}"
                order_seq += 1
                total = sum(int(ln["quantity"]) * int(ln["unit_price"] * 100) for ln in opp_lines)
                order_date: date = when.date()
                orders.append({"order_no": order_no, "cust_no": cust_no, "status": status,
                               "order_date": order_date, "total_fen": total, "currency": "CNY",
                               "modified_on": _local(when)})
                order_lines.extend(
                    {"order_no": order_no, "line_no": k + 1, "sku": ln["product_code"], "qty": ln["quantity"],
                     "price_fen": int(ln["unit_price"] * 100)}
                    for k, ln in enumerate(opp_lines)
                )
                opp["erp_order_no"] = order_no
                opp["fulfillment_status"] = fulfil[status]
                if status in (40, 50, 60):
                    shipments.append({"shipment_no": f"SH{len(shipments) + 1:08d}", "order_no": order_no,
                                      "shipped_on": order_date + timedelta(days=5), "carrier": "顺丰速运",
                                      "tracking_no": f"SF{rng.randint(10**11, 10**12 - 1)}"})
                if status in (50, 60):
                    inv_no = f"INV{len(invoices) + 1:08d}"
                    invoices.append({"invoice_no": inv_no, "order_no": order_no, "amount_fen": total,
                                     "issued_on": order_date + timedelta(days=7),
                                     "due_on": order_date + timedelta(days=37),
                                     "status": "paid" if status == 60 else "open"})
                    if status == 60:
                        payments.append({"payment_no": f"PAY{len(payments) + 1:08d}", "invoice_no": inv_no,
                                         "amount_fen": total, "received_on": _local(when + timedelta(days=20))})
                    if rng.random() < 0.2:
                        ret_no = f"RT{len(returns) + 1:08d}"
                        returns.append({"return_no": ret_no, "order_no": order_no, "reason": "质量问题",
                                        "status": "requested", "created_on": _local(when + timedelta(days=25))})
                        cases.append({"id": uuid.UUID(int=rng.getrandbits(128), version=4),
                                      "account_id": acc["id"], "opportunity_id": opp_id, "kind": "return",
                                      "subject": "退货申请", "status": "pending", "erp_return_no": ret_no,
                                      "updated_at": when + timedelta(days=25)})
            opps.append(opp)
            lines.extend(opp_lines)
        if rng.random() < 0.15:
            cases.append({"id": uuid.UUID(int=rng.getrandbits(128), version=4), "account_id": acc["id"],
                          "opportunity_id": None, "kind": rng.choice(["question", "complaint"]),
                          "subject": rng.choice(["发票抬头咨询", "交期咨询", "安装问题", "售后投诉"]),
                          "status": rng.choice(["open", "closed"]), "erp_return_no": None,
                          "updated_at": SEED_EPOCH})
    data.crm.update({"opportunities": opps, "opportunity_lines": lines, "cases": cases})
    data.erp.update({"sales_orders": orders, "sales_order_lines": order_lines, "shipments": shipments,
                     "invoices": invoices, "payments": payments, "return_orders": returns})
    # Keep ERP sequences ahead of the seeded numbers.
    data.erp["_sequences"] = [
        {"name": "customer_no_seq", "next": 100001 + len(data.erp["customers"])},
        {"name": "sales_order_no_seq", "next": order_seq},
        {"name": "shipment_no_seq", "next": len(shipments) + 1},
        {"name": "invoice_no_seq", "next": len(invoices) + 1},
        {"name": "payment_no_seq", "next": len(payments) + 1},
        {"name": "return_no_seq", "next": len(returns) + 1},
    ]


def _ddl(name: str) -> str:
    return resources.files("streams.local").joinpath("demo", f"{name}.sql").read_text(encoding="utf-8")


SEEDED = "demo schema and data created"
ALREADY = "already seeded"
FOREIGN = "has tables of its own: the demo is not installed there, the sync works with what it holds"


def install(conn: psycopg.Connection[Any], system: str, tables: dict[str, list[dict[str, Any]]] | None,
            schema: str | None = None) -> str:
    """Create the demo schema of ``system`` and load ``tables`` once; what it did (``SEEDED`` ...).

    Schema and rows go in one transaction with the ``sync_meta.seeded`` marker, so a crash
    half-way leaves nothing and a second run never seeds twice. A database that already holds
    tables the demo did not make (a real ERP pointed at by the local stack) is never touched.
    ``schema`` names another demo's DDL (``demo/<schema>.sql``; None or ``demo``: the system's own).
    """
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('sync_meta.seeded') IS NOT NULL").fetchone()
        if exists and exists[0]:
            done = conn.execute("SELECT count(*) FROM sync_meta.seeded").fetchone()
            if done and done[0]:
                return ALREADY
        own = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
                           " 'information_schema', 'sync_meta')").fetchone()
        if own and own[0]:
            return FOREIGN
        conn.execute(_ddl(system if schema in (None, "demo") else schema).encode())
        for table, rows in (tables or {}).items():
            if table == "_sequences":
                for seq in rows:
                    conn.execute("SELECT setval(%s, %s, false)", (seq["name"], seq["next"]))
                continue
            if not rows:
                continue
            cols = list(rows[0])
            stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(table),
                sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                sql.SQL(", ").join(sql.Placeholder() for _ in cols),
            )
            with conn.cursor() as cur:
                cur.executemany(stmt, [tuple(r[c] for c in cols) for r in rows])
        conn.execute("INSERT INTO sync_meta.seeded (id) VALUES (1)")
    return SEEDED
