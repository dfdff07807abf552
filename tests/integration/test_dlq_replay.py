"""Dead letters replayed after a fix reach the other system (architecture decision 9)."""

from __future__ import annotations

import subprocess

import pytest

from streams.local.harness import (
    REPO,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)

pytestmark = pytest.mark.integration
DEMO = REPO / "schemas" / "mappings" / "demo.yaml"


def test_replay_after_fixing_the_profile() -> None:
    with scratch_harness("dlq") as h:
        fixed = DEMO.read_text(encoding="utf-8").replace(
            "canonical_schema: ../canonical/customer.avsc",
            f"canonical_schema: {REPO / 'schemas' / 'canonical' / 'customer.avsc'}")
        broken = fixed.replace("{enum: {A: A, B: B, C: C}}", "{enum: {A: A, B: B}}")  # tier C unknown: a bug
        assert broken != fixed
        profile = h.root / "profile.yaml"
        profile.write_text(broken, encoding="utf-8")
        h.write_config(processors={"profiles": [str(profile)]})
        with running(h.spawn("capture")):
            wait_for_capture(h)
            with h.connect("sync") as conn, running(h.spawn("worker", log_name="worker.log")):
                wait_for_identity(h)
                crm_id, erp_id = conn.execute(
                    "SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id LIMIT 1"
                ).fetchone()
                with h.connect("crm") as crm:
                    crm.execute("UPDATE accounts SET tier = 'C', email = 'replayed@example.com' WHERE id = %s",
                                (crm_id,))
                wait_for(lambda: scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE reason LIKE %s",
                                        "%invalid enum value 'C'%"), 90, 0.5, "the edit in the dead letters")
            with h.connect("erp") as erp:
                assert scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id) != "replayed@example.com"
            profile.write_text(fixed, encoding="utf-8")  # the fix
            with running(h.spawn("worker", log_name="worker.log")):
                listed = subprocess.run(h.cli("dlq", "list"), capture_output=True, text=True, check=True)
                assert "invalid enum value 'C'" in listed.stdout
                done = subprocess.run(h.cli("dlq", "replay"), capture_output=True, text=True, check=False)
                assert done.returncode == 0 and "replayed" in done.stdout, done.stderr
                with h.connect("erp") as erp:
                    wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id)
                             == "replayed@example.com", 90, 0.5, "the replayed edit in the ERP")
                again = subprocess.run(h.cli("dlq", "replay"), capture_output=True, text=True, check=True)
                assert "replayed 0 dead letter" in again.stdout  # each letter goes back once
