"""`crm-erp-sync doctor` on a real deployment: every check passes on a good one, and each fault is one line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from streams.local.harness import Harness, live_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployed(failures: Callable[[], bool]) -> Iterator[Harness]:
    # The owner's login: the faults edit the owner's config.
    with live_stack("doctor", worker=False, least_privilege=False, failed=failures) as h:
        yield h


def doctor(h: Harness) -> tuple[int, list[str]]:
    done = subprocess.run(h.cli("doctor"), capture_output=True, text=True, check=False, timeout=120)
    return done.returncode, done.stdout.splitlines()


def test_a_good_deployment_passes_every_check(deployed: Harness) -> None:
    code, lines = doctor(deployed)
    assert code == 0, "\n".join(lines)
    assert lines and all(line.split()[0] in ("ok", "warn") for line in lines), lines
    for expected in ("ok   crm wal_level: logical", "ok   erp table public.customers: captured",
                     "ok   crm publication crm_erp_sync_crm", "ok   kafka: reachable", "ok   schema registry",
                     "ok   connector crm-postgres: RUNNING"):
        assert any(line.startswith(expected) for line in lines), (expected, lines)


def test_each_fault_is_one_line_with_its_fix(deployed: Harness) -> None:
    h = deployed
    with h.connect("crm") as crm:  # a DBA's mistakes: identity reset, a column the applier may no longer write
        crm.execute("ALTER TABLE accounts REPLICA IDENTITY DEFAULT")
        crm.execute("CREATE ROLE doctor_applier LOGIN PASSWORD 'doctor-test'")
        crm.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO doctor_applier")
        crm.execute("GRANT UPDATE (name, phone) ON accounts TO doctor_applier")
    try:
        code, lines = doctor(h)
        assert code == 1
        failed = [line for line in lines if line.startswith("FAIL")]
        assert failed == [next(line for line in lines if line.startswith("FAIL crm table public.accounts"))], lines
        assert "replica identity not FULL" in failed[0]
        assert "fix: ALTER TABLE \"public\".\"accounts\" REPLICA IDENTITY FULL" in failed[0]
        # The same deployment seen with a login that may update two columns only.
        limited = h.config_path.read_text(encoding="utf-8").replace("user: sync", "user: doctor_applier")
        password = h.root / "secrets" / "doctor-password"
        password.write_text("doctor-test\n", encoding="utf-8")
        config = h.root / "doctor.yaml"
        config.write_text(limited.replace(f"password_file: {h.db['password_file']}",
                                          f"password_file: {password}"), encoding="utf-8")
        done = subprocess.run([*h.cli()[:4], str(config), "doctor"], capture_output=True, text=True,
                              check=False, timeout=120)
        line = next(x for x in done.stdout.splitlines() if x.startswith("FAIL crm table public.accounts"))
        assert "may not update" in line and "email" in line and "phone" not in line.split("may not update")[1]
        assert "GRANT UPDATE (" in line
    finally:
        with h.connect("crm") as crm:
            crm.execute("ALTER TABLE accounts REPLICA IDENTITY FULL")
            crm.execute("DROP OWNED BY doctor_applier")
            crm.execute("DROP ROLE doctor_applier")
    code, _ = doctor(h)
    assert code == 0
