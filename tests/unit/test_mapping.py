"""Mapping profiles and conversions (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import ConfigError, TerminalError
from streams.mapping.convert import build, fen_to_yuan, yuan_to_fen
from streams.mapping.profile import Scope, load_profile

DEMO = Path(__file__).resolve().parents[2] / "schemas" / "mappings" / "demo.yaml"


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_fen_yuan_round_trip_is_exact(fen: int) -> None:
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


def test_fraction_of_a_fen_and_floats_are_rejected() -> None:
    with pytest.raises(TerminalError, match="fraction of a fen"):
        yuan_to_fen(Decimal("1.005"))
    with pytest.raises(TerminalError, match="floats"):
        yuan_to_fen(1.5)


# China kept daylight-saving time 1986-1991 (an hour of wall-clock times is ambiguous there); since
# 1992 Asia/Shanghai is UTC+8 all year.
@given(st.datetimes(min_value=datetime(1992, 1, 1), max_value=datetime(2100, 1, 1),  # noqa: DTZ001 - bounds
                    timezones=st.just(UTC)))
def test_shanghai_local_time_round_trips(moment: datetime) -> None:
    conv = build("local_micros:Asia/Shanghai")
    wall = conv.backward(moment)  # what the ERP column holds
    micros = (wall.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert conv.forward(micros) == moment
    assert (moment - wall.replace(tzinfo=UTC)).total_seconds() == -8 * 3600


def test_enum_map_rejects_unknown_values() -> None:
    conv = build({"enum": {"NET30": "net30", "COD": "cod"}})
    assert conv.forward(" NET30 ") == "net30" and conv.backward("cod") == "COD"
    with pytest.raises(TerminalError, match="invalid enum value 'NET90'"):
        conv.forward("NET90")


def test_demo_profile_maps_both_ways() -> None:
    p = load_profile(DEMO)
    assert set(p.synced_fields()) == {"legal_name", "tax_id", "phone", "email", "address", "credit_limit_fen"}
    crm = p.to_canonical("crm", {"legal_name": " 华信科技有限公司 ", "credit_limit": Decimal("500000.00"),
                                 "email": "Sales@Example.com", "phone": "021 5550 1234", "status": "active"})
    assert crm == {"legal_name": "华信科技有限公司", "credit_limit_fen": 50000000, "email": "sales@example.com",
                   "phone": "02155501234", "status": "active"}
    assert p.to_columns("erp", crm) == {"full_name": "华信科技有限公司", "credit_limit_fen": 50000000,
                                        "email": "sales@example.com", "contact_phone": "02155501234"}
    assert p.to_columns("crm", {"credit_limit_fen": 12345})["credit_limit"] == Decimal("123.45")


def test_invalid_row_names_the_field() -> None:
    p = load_profile(DEMO)
    with pytest.raises(TerminalError, match=r"field tier \(crm.tier\): invalid enum value 'Z'"):
        p.to_canonical("crm", {"tier": "Z"})


@pytest.mark.parametrize("edit, message", [
    (("owner: crm, personal: true}\n  email", "personal: true}\n  email"),
     "fields.phone: policy source_of_truth needs owner"),
    (("convert: yuan_to_fen}", "convert: yuan_to_cents}"), "unknown converter 'yuan_to_cents'"),
    (("  payment_terms:", "  unknown_field:"), "unknown_field are not in customer.avsc"),
    (("policy: manual}", "policy: sometimes}"), "fields.tax_id.policy"),
    (("\nfields:", "\nscope: {erp: {tier: [A]}}\nfields:"), "scope.erp.tier is not a field with a erp column"),
    (("key: cust_no", "key: cust_no\n    stamp: {full_name: x}"), "sources.erp.stamp: full_name is also a field"),
    (("key: cust_no", "key: cust_no\n    stamp: {changed_at: {now: Mars/Base}}"), "unknown time zone 'Mars/Base'"),
    (("key: cust_no", "key: cust_no\n    new_key: {sequence: public.s, format: CUST}"), "must hold {n} exactly once"),
    (("key: cust_no", "key: cust_no\n    new_key: {sequence: public.s, format: 'C-{n:x}'}"),
     "{n:x} is not one of {n}, {n:0<width>d}, {year}"),
    (("table: public.customers", "table: public.tab;Customer"), "sources.erp.table"),
])
def test_profile_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = DEMO.read_text(encoding="utf-8")
    assert edit[0] in text
    (tmp_path / "canonical").mkdir()
    (tmp_path / "canonical" / "customer.avsc").write_text(
        (DEMO.parent.parent / "canonical" / "customer.avsc").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "mappings").mkdir()
    bad = tmp_path / "mappings" / "demo.yaml"
    bad.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_profile(bad)
    assert message in err.value.one_line()


def test_a_key_format_is_parsed_into_text_the_sequence_and_the_year() -> None:
    from streams.mapping.writes import KeyFormat

    assert KeyFormat.parse("SAL-ORD-{year}-{n:05d}") == [("text", "SAL-ORD-"), ("year", 4), ("text", "-"), ("n", 5)]
    assert KeyFormat.parse("{n}") == [("n", 0)]


PRODUCTS = DEMO.with_name("demo-products.yaml")


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_milli_round_trip_is_exact(milli: int) -> None:
    conv = build("milli")
    assert conv.forward(conv.backward(milli)) == milli
    with pytest.raises(TerminalError, match="fraction of a thousandth"):
        conv.forward(Decimal("1.0005"))


def test_a_computed_side_is_read_and_never_written() -> None:
    profile = load_profile(PRODUCTS)
    item = {"sku": "SKU-1", "description": "螺栓", "uom": "PCS", "price_fen": 1250,
            "on_hand": Decimal("10.500"), "reserved": Decimal("2.250"), "modified_on": 0}
    values = profile.to_canonical("erp", item)
    assert values["available_qty_milli"] == 8250 and values["list_price_fen"] == 1250
    assert profile.to_columns("crm", values)["available_qty"] == Decimal("8.250")
    assert "on_hand" not in profile.to_columns("erp", values)  # computed there: never written
    assert "available_qty_milli" not in profile.to_canonical("erp", {k: v for k, v in item.items() if k != "reserved"})


def test_a_computed_side_must_be_the_owner(tmp_path: Path) -> None:
    computed = "erp: {column: on_hand, minus: reserved, convert: milli},\n" + " " * 24
    text = PRODUCTS.read_text(encoding="utf-8").replace(
        computed + "policy: source_of_truth, owner: erp", computed + "policy: latest")
    assert "policy: latest" in text
    (tmp_path / "p.yaml").write_text(text.replace("../canonical/", str(PRODUCTS.parents[1] / "canonical") + "/"),
                                     encoding="utf-8")
    with pytest.raises(ConfigError, match="erp computes this field"):
        load_profile(tmp_path / "p.yaml")


def test_one_bad_field_is_one_bad_field() -> None:
    """An invalid value of one field leaves the row's other fields readable."""
    p = load_profile(DEMO)
    values, invalid = p.read_fields("crm", {"tier": "Z", "name": "   ", "email": "Ops@Example.com", "phone": "021 1"})
    assert values == {"email": "ops@example.com", "phone": "0211"}
    assert invalid == {"tier": "field tier (crm.tier): invalid enum value 'Z'; allowed: A, B, C",
                       "name": "field name (crm.name) is required but empty"}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_json_cannot_hold_is_a_bad_field(tmp_path: Path, number: float) -> None:
    """A ``double precision`` column passed through: a NaN or an infinity could be neither stored nor sent."""
    text = DEMO.read_text(encoding="utf-8").replace("erp: {column: credit_limit_fen, convert: integer},",
                                                    "erp: {column: credit_limit_fen, convert: identity},")
    assert "convert: identity}" in text
    (tmp_path / "p.yaml").write_text(text.replace("../canonical/", str(DEMO.parents[1] / "canonical") + "/"),
                                     encoding="utf-8")
    profile = load_profile(tmp_path / "p.yaml")
    values, invalid = profile.read_fields("erp", {"credit_limit_fen": number, "email": "a@b.c"})
    assert values == {"email": "a@b.c"}
    assert invalid == {"credit_limit_fen": f"field credit_limit_fen (erp.credit_limit_fen) is {number}:"
                                           " only finite numbers can be synced"}
    assert profile.read_fields("erp", {"credit_limit_fen": 2.5})[0] == {"credit_limit_fen": 2.5}


def test_a_pilot_scope_admits_a_record_by_the_sides_it_knows() -> None:
    scope = Scope(crm={"tier": ["A"]}, erp={"payment_terms": ["NET30"]})
    assert scope.admits({"crm": {"tier": "A"}, "erp": {"payment_terms": "NET30"}})
    assert not scope.admits({"crm": {"tier": "B"}, "erp": {"payment_terms": "NET30"}})
    assert not scope.admits({"crm": {"tier": "A"}, "erp": {"payment_terms": "COD"}})
    assert scope.admits({"crm": {"tier": "A", "payment_terms": "NET30"}})  # no ERP record yet: judged by the CRM's
    assert not scope.admits({"erp": {"payment_terms": "NET30"}})  # no CRM record: it has no tier, so not A
    assert not scope.admits({})  # nothing known yet: in doubt, out
    assert scope.describe() == "crm.tier in ['A'] and erp.payment_terms in ['NET30']"


def _variable_scale(text: str) -> dict[str, object]:
    """A ``numeric`` without declared scale as Debezium's Avro sends it."""
    amount = Decimal(text)
    exponent = int(amount.as_tuple().exponent)
    unscaled = int(amount.scaleb(-exponent))
    return {"scale": -exponent, "value": unscaled.to_bytes(16, "big", signed=True).lstrip(b"\0") or b"\0"}


@pytest.mark.parametrize(("text", "fen", "exact"), [
    ("2999.95", 299995, "2999.95"), ("2999.950000000", 299995, "2999.95"), ("0", 0, "0"), ("12", 1200, "12"),
    ("-0.50", -50, "-0.5")])
def test_variable_scale_and_currency_unit_decimals_are_exact(text: str, fen: int, exact: str) -> None:
    cents = build("scaled:2")
    assert cents.forward(_variable_scale(text)) == fen
    assert cents.forward(Decimal(text)) == fen  # numeric(21,9) arrives as a decimal
    assert build("yuan_to_fen").forward(_variable_scale(text)) == fen
    assert cents.backward(fen) == Decimal(text).quantize(Decimal("0.01"))
    assert build("decimal").forward(_variable_scale(text)) == exact


def test_a_variable_scale_decimal_below_the_unit_is_refused_not_rounded() -> None:
    with pytest.raises(TerminalError, match="fraction"):
        build("scaled:2").forward(_variable_scale("2999.955"))
    with pytest.raises(TerminalError, match="not an amount"):
        build("scaled:2").forward({"scale": 2, "value": 7})
    with pytest.raises(ValueError, match="0 to 18"):
        build("scaled:x")


def test_a_queried_side_reads_its_value_from_the_query_column_and_is_never_written(tmp_path: Path) -> None:
    from streams.mapping.profile import QUERIED

    limit = ("erp: {query: 'SELECT credit_limit FROM public.\"tabCustomer Credit Limit\" WHERE parent = %(key)s',"
             " watch: {'public.tabCustomer Credit Limit': parent}, convert: 'scaled:2'},")
    text = DEMO.read_text(encoding="utf-8").replace("erp: {column: credit_limit_fen, convert: integer},", limit)
    assert limit in text
    (tmp_path / "p.yaml").write_text(text.replace("../canonical/", str(DEMO.parents[1] / "canonical") + "/"),
                                     encoding="utf-8")
    profile = load_profile(tmp_path / "p.yaml")
    assert profile.watched("erp") == {"public.tabCustomer Credit Limit": {
        "credit_limit_fen": profile.fields["credit_limit_fen"].erp}}
    queried = QUERIED.format("credit_limit_fen")
    values = profile.to_canonical("erp", {"cust_no": "C1", queried: Decimal("2999.950000000")})
    assert values == {"credit_limit_fen": 299995}
    assert "credit_limit_fen" not in profile.to_canonical("erp", {"cust_no": "C1"})  # not read: not known
    assert profile.to_columns("erp", {"credit_limit_fen": 1, "email": "a@b.c"}) == {"email": "a@b.c"}


@pytest.mark.parametrize(("side", "message"), [
    ({"column": "a", "query": "SELECT 1 WHERE %(key)s"}, "either column or query"),
    ({"query": "SELECT 1 WHERE %(id)s", "watch": {"public.t": "id"}}, "takes one parameter, %(key)s"),
    ({"query": "SELECT 1 WHERE %(key)s"}, "needs watch"),
    ({"column": "a", "watch": {"public.t": "id"}}, "watch goes with query"),
])
def test_a_bad_queried_side_names_the_mistake(side: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    from streams.mapping.profile import SideSpec

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SideSpec(**side)  # type: ignore[arg-type]


def test_every_shipped_profile_loads_and_refuses_an_unknown_key(tmp_path: Path) -> None:
    """Mapping and document profiles alike (their models forbid keys they do not know)."""
    import yaml

    from streams.documents.spec import load_documents
    from streams.settings import ERPNEXT_PROFILES

    shipped = sorted(DEMO.parent.rglob("*.yaml"))
    assert {p.relative_to(DEMO.parent).as_posix() for p in shipped} >= {
        "demo.yaml", "demo-products.yaml", "demo-orders.yaml", "erpnext/customers.yaml", "erpnext/products.yaml",
        "erpnext/orders.yaml"}
    assert all((DEMO.parents[2] / p).is_file() for paths in ERPNEXT_PROFILES.values() for p in paths)
    for path in shipped:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        documents = set(data) <= {"creates", "rollups", "canonical"}
        (load_documents([path]) if documents else load_profile(path))
        copy = tmp_path / path.relative_to(DEMO.parent)  # the same, one key misspelt, beside its schemas
        copy.parent.mkdir(parents=True, exist_ok=True)
        rule = (data["creates"] or data["rollups"])[0] if documents else data["sources"]["erp"]
        rule["colour"] = "blue"
        copy.write_text(yaml.safe_dump(data, allow_unicode=True).replace(
            "../../canonical/", "../canonical/").replace(
            "../canonical/", str(DEMO.parents[1] / "canonical") + "/"), encoding="utf-8")
        with pytest.raises(ConfigError, match="colour"):
            load_documents([copy]) if documents else load_profile(copy)
