"""Whether both databases agree: shared by the fault benchmarks and the integration and e2e tiers."""

from __future__ import annotations

from typing import Any

from streams.local.harness import REPO, Harness, scalar, wait_for
from streams.local.status import scrape
from streams.mapping.profile import load_profile

PROFILE = load_profile(REPO / "schemas" / "mappings" / "demo.yaml")


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of a counter's samples matching ``labels`` on a worker's endpoint."""
    samples = scrape(port)
    if samples is None:
        raise OSError(f"no metrics on port {port}")
    return sum(v for sample_labels, v in samples.get(name, [])
               if all(sample_labels.get(k) == v2 for k, v2 in labels.items()))


def linked_rows(h: Harness) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each linked (CRM account, ERP customer) pair as column dicts."""
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
                             " AND crm_id IS NOT NULL AND erp_id IS NOT NULL").fetchall()
    with h.connect("crm") as crm, h.connect("erp") as erp:
        crm_rows = {str(r[0]): r for r in crm.execute("SELECT * FROM accounts").fetchall()}
        crm_cols = [d.name for d in crm.execute("SELECT * FROM accounts LIMIT 0").description or []]
        erp_rows = {r[0]: r for r in erp.execute("SELECT * FROM customers").fetchall()}
        erp_cols = [d.name for d in erp.execute("SELECT * FROM customers LIMIT 0").description or []]
    return [(dict(zip(crm_cols, crm_rows[c], strict=True)), dict(zip(erp_cols, erp_rows[e], strict=True)))
            for c, e in pairs]


def disagreements(h: Harness) -> list[tuple[str, str, Any, Any]]:
    """(CRM id, field, CRM value, ERP value) of every mapped field a linked pair disagrees on."""
    out = []
    for crm_row, erp_row in linked_rows(h):
        a, b = PROFILE.to_canonical("crm", crm_row), PROFILE.to_canonical("erp", erp_row)
        out += [(str(crm_row["id"]), f, a.get(f), b.get(f)) for f in PROFILE.synced_fields()
                if f != "tax_id" and a.get(f) != b.get(f)]
    return out


def wait_agreed(h: Harness, timeout: float, what: str, interval: float = 0.5) -> None:
    """Wait until every linked pair agrees; on timeout, say which fields still differ and why they might."""
    last: list[tuple[str, str, Any, Any]] = []

    def agreed() -> bool:
        nonlocal last
        last = disagreements(h)
        return not last

    def why() -> str:
        with h.connect("sync") as conn:
            conflicts = scalar(conn, "SELECT count(*) FROM sync.conflicts WHERE status = 'open'")
            pending = scalar(conn, "SELECT count(*) FROM sync.pending_creates")
            dead = conn.execute("SELECT stage, reason FROM sync.dead_letters ORDER BY id LIMIT 3").fetchall()
        return (f"{len(last)} fields of {len({d[0] for d in last})} linked pairs differ,"
                f" e.g. (CRM id, field, CRM value, ERP value) {last[:5]}; open conflicts {conflicts},"
                f" pending creates {pending}, dead letters {dead}; logs in {h.root}")

    wait_for(agreed, timeout, interval, what, why)
