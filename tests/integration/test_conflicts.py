"""Conflicts on the real stack: both systems edit the same fields before the sync sees either."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from streams.local.erps import DemoErp
from streams.local.harness import (
    REPO,
    Harness,
    TopicReader,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.mapping.profile import load_profile
from streams.topics import AUDIT, raw_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(demo_erp: DemoErp, failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_harness(f"conflicts-{demo_erp.name}", failures, erp=demo_erp.name) as h:
        # One policy of each kind, by editing the profile only: address becomes "latest".
        profile = yaml.safe_load(demo_erp.profiles[0].read_text(encoding="utf-8"))
        profile["canonical_schema"] = str(REPO / "schemas" / "canonical" / "customer.avsc")
        profile["fields"]["address"].update({"policy": "latest", "owner": None})
        (h.root / "profile.yaml").write_text(yaml.safe_dump(profile, allow_unicode=True), encoding="utf-8")
        h.write_config(processors={"profiles": [str(h.root / "profile.yaml")]})
        h.demo_erp = demo_erp  # type: ignore[attr-defined]
        with running(h.spawn("capture")):
            wait_for_capture(h, ("crm.public.accounts", raw_topic("erp", demo_erp.customer_table)))
            yield h


SKEWS = [0, 60, -60]


@pytest.mark.parametrize("skew", SKEWS, ids=lambda s: f"worker_clock_{s:+d}s")
def test_one_conflict_per_policy_kind_and_manual_resolve(stack: Harness, skew: int) -> None:
    """The same results whatever the worker's clock says: echoes are told by transaction, ``latest`` by the
    databases' commit times (each run on its own pair, with its own values)."""
    h, n = stack, SKEWS.index(skew) + 1
    erp_: DemoErp = h.demo_erp  # type: ignore[attr-defined]
    profile_fields = load_profile(h.root / "profile.yaml").synced_fields()
    env = {"CRM_ERP_SYNC_CLOCK_SKEW_S": str(skew)}
    with running(h.spawn("worker", log_name="worker.log", env=env)):
        wait_for_identity(h)
        with h.connect("sync") as conn:
            crm_id, erp_id = conn.execute(
                "SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id OFFSET %s LIMIT 1",
                (n,)).fetchone()
        with h.connect("sync") as conn:
            # Settled: every synced field of the pair agreed, and no write of the sync in flight.
            def settled() -> bool:
                state = scalar(conn, "SELECT state FROM sync.entity_state s JOIN sync.xref x"
                                     " USING (entity, global_id) WHERE x.crm_id = %s", crm_id)
                fields = (state or {}).get("fields", {})
                synced = [f for f in profile_fields if f in fields]
                return len(synced) == len(profile_fields) and all(
                    "synced" in fields[f] and not fields[f].get("inflight") and not fields[f].get("deferred")
                    for f in synced)

            wait_for(settled, 90, 0.3, "the pair's initial alignment to settle")
            since, gid = conn.execute("SELECT now(), global_id::text FROM sync.xref WHERE crm_id = %s",
                                      (crm_id,)).fetchone()
    # The worker is stopped: edit the same four fields on both sides (the ERP later).
    with h.connect("crm") as crm:
        crm.execute("UPDATE accounts SET email = 'crm.side@example.com', credit_limit = 1.00,"
                    " address = 'CRM 地址', uscc = %s WHERE id = %s", (f"CRMTAX00000000000{n}", crm_id))
    with h.connect("erp", autocommit=False) as erp:  # one ERP transaction, as one save of its form
        erp_.update_customer(erp, erp_id, email="erp.side@example.com", address="ERP 地址",
                             tax_id=f"ERPTAX00000000000{n}")
        erp_.set_credit(erp, erp_id, Decimal("2.00"))
        erp.commit()
    with running(h.spawn("worker", log_name="worker.log", env=env)), h.connect("crm") as crm, h.connect("erp") as erp:
        def both(crm_sql: str, field: str) -> tuple[Any, Any]:
            return (scalar(crm, crm_sql, crm_id), erp_.customer(erp, erp_id, field)[0])

        wait_for(lambda: both("SELECT email FROM accounts WHERE id = %s", "email")
                 == ("crm.side@example.com",) * 2, 90, 0.3, "email: the CRM (owner) wins")
        wait_for(lambda: (scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", crm_id),
                          erp_.credit_limit(erp, erp_id)) == (Decimal("2.00"),) * 2, 90, 0.3,
                 "credit limit: the ERP (owner) wins")
        wait_for(lambda: both("SELECT address FROM accounts WHERE id = %s", "address")
                 == ("ERP 地址",) * 2, 90, 0.3, "address: the latest edit (ERP) wins")
        with h.connect("sync") as conn:
            def by_field() -> dict[str, list[dict[str, Any]]]:
                rows = conn.execute(
                    "SELECT field, kind, resolution, status, id FROM sync.conflicts c JOIN sync.xref x"
                    " USING (entity, global_id) WHERE x.crm_id = %s AND c.kind <> 'initial_mismatch'"
                    " AND c.detected_at > now() - interval '10 minutes'", (crm_id,)).fetchall()
                out: dict[str, list[dict[str, Any]]] = {}
                for field, kind, resolution, status, cid in rows:
                    out.setdefault(field, []).append({"kind": kind, "resolution": resolution, "status": status,
                                                      "id": cid})
                return out

            found = wait_for(lambda: (c := by_field()) and "tax_id" in c and c, 90, 0.3, "the manual conflict")
            assert sorted(found) == ["address", "credit_limit_fen", "email", "tax_id"], found
            extra = {f: v for f, v in found.items() if len(v) != 1}
            assert not extra, f"more than one conflict for {sorted(extra)}: {extra}"  # one per field, never more
            assert found["email"][0]["resolution"] in ("crm", "reverted")
            assert found["credit_limit_fen"][0]["resolution"] in ("erp", "reverted")
            assert found["address"][0]["resolution"] == "erp"
            manual = found["tax_id"][0]
            assert (manual["resolution"], manual["status"]) == (None, "open")
            # Waiting for a person: nothing was written for tax_id.
            assert both("SELECT uscc FROM accounts WHERE id = %s", "tax_id") \
                == (f"CRMTAX00000000000{n}", f"ERPTAX00000000000{n}")
            listed = subprocess.run(h.cli("conflicts", "list"), capture_output=True, text=True, check=True)
            assert str(manual["id"]) in listed.stdout and "tax_id" in listed.stdout
            done = subprocess.run(h.cli("conflicts", "resolve", str(manual["id"]), "--value", f"AGREED00000000000{n}",
                                        "--by", "ops-test"), capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: both("SELECT uscc FROM accounts WHERE id = %s", "tax_id")
                     == (f"AGREED00000000000{n}",) * 2, 90, 0.3, "the resolved value on both sides")
            assert scalar(conn, "SELECT status FROM sync.conflicts WHERE id = %s", manual["id"]) == "resolved"
            again = subprocess.run(h.cli("conflicts", "resolve", str(manual["id"]), "--take", "crm"),
                                   capture_output=True, text=True, check=False)
            assert again.returncode == 2 and "already resolved" in again.stderr
            check_audit(h, gid, since, manual["id"], n, erp_)


def check_audit(h: Harness, gid: str, since: datetime, conflict_id: int, n: int, erp: DemoErp) -> None:
    """Each final write is in the audit trail once, with who decided and the change that caused it."""
    tax_no, email = erp.columns["tax_id"], erp.columns["email"]
    final = {("crm", "uscc"): f"AGREED00000000000{n}", ("erp", tax_no): f"AGREED00000000000{n}",
             ("crm", "address"): "ERP 地址", ("erp", email): "crm.side@example.com", ("crm", "credit_limit"): 200}

    def trail() -> list[dict[str, Any]]:
        out = subprocess.run(h.cli("audit", "--global-id", gid, "--since", since.isoformat(), "--format", "json"),
                             capture_output=True, text=True, check=True)
        return list(json.loads(out.stdout))

    def each(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        return {where: [e for e in entries if (e["system"], e["column_name"]) == where and e["new_value"] == new]
                for where, new in final.items()}

    entries = wait_for(lambda: (t := trail()) and all(each(t).values()) and t, 60, 0.5, "the writes in the audit trail")
    found = each(entries)
    assert all(len(v) == 1 for v in found.values()), found  # once each
    for where in (("crm", "uscc"), ("erp", tax_no)):
        (e,) = found[where]
        assert (e["kind"], e["decided_by"], e["cause_event"]) == ("resolution", "person:ops-test",
                                                                   f"conflict/{conflict_id}"), e
    (address,) = found[("crm", "address")]
    assert (address["kind"], address["decided_by"], address["old_value"]) == ("resolution", "policy:latest",
                                                                              "CRM 地址"), "\n".join(
        f"{e['system']} {e['column_name']} {e['old_value']!r}->{e['new_value']!r} {e['kind']} {e['decided_by']}"
        f" {e['cause_event']}" for e in entries)
    for where in (("crm", "address"), ("erp", email), ("crm", "credit_limit")):  # caused by a captured change
        (e,) = found[where]  # (whichever of the two edits reconcile read second)
        assert e["cause_system"] in ("crm", "erp") and e["cause_tx_id"] and e["cause_lsn"], e
    assert all(e["command_id"] and e["cause_event"] and e["entity"] == "customer" for e in entries)
    table = subprocess.run(h.cli("audit", "--global-id", gid, "--field", "tax_id", "--since", since.isoformat()),
                           capture_output=True, text=True, check=True).stdout
    assert "resolution by person:ops-test" in table and f"AGREED00000000000{n}" in table, table
    reader = TopicReader(h.bootstrap, h.registry_url, [AUDIT])  # published too, with the same ids
    try:
        ids = {e["audit_id"] for v in found.values() for e in v}
        reader.wait(lambda rs: ids <= {r["value"]["audit_id"] for r in rs} or None, 60, "the entries on sync.audit")
    finally:
        reader.close()
