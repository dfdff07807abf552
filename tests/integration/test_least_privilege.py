"""The least-privilege roles of deploy/sql/: the sync works with them, and they allow nothing else."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from streams.local.harness import (
    REPO,
    Harness,
    edits_sync_both_ways,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.registry.store import RegistryStore
from streams.store import Store

pytestmark = pytest.mark.integration
PASSWORD = "least-privilege-test"


@pytest.fixture(scope="module")
def restricted(failures: Callable[[], bool]) -> Iterator[Harness]:
    """The demo databases with deploy/sql/ applied by their owner; a config whose CRM and ERP login is the applier."""
    with scratch_harness("roles", failures, least_privilege=False) as h:
        for system in ("crm", "erp"):
            with h.connect(system) as owner:
                owner.execute((REPO / "deploy" / "sql" / f"{system}.sql").read_text(encoding="utf-8"))
                owner.execute(f"ALTER ROLE crm_erp_sync_apply PASSWORD '{PASSWORD}'")
                owner.execute(f"ALTER ROLE crm_erp_sync_capture PASSWORD '{PASSWORD}'")
        yield h


def role_config(h: Harness, role: str, **sections: dict[str, object]) -> Path:
    """The harness's configuration as it is now, with ``role``'s login for the CRM and the ERP."""
    secret = h.root / "secrets" / "role-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    config = yaml.safe_load(h.config_path.read_text(encoding="utf-8"))
    for system in ("crm", "erp"):
        config[system].update(user=role, password_file=str(secret))
    for key, values in sections.items():
        config.setdefault(key, {}).update(values)
    path = h.root / f"{role}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def applier_config(h: Harness) -> Path:
    """The harness's configuration with the applier's login for the CRM and the ERP."""
    return role_config(h, "crm_erp_sync_apply")


def test_the_applier_role_writes_mapped_columns_only(restricted: Harness) -> None:
    h = restricted
    login = {**h.conninfo("crm"), "user": "crm_erp_sync_apply", "password": PASSWORD}
    with psycopg.connect(**login, autocommit=True) as crm:
        account = scalar(crm, "SELECT id::text FROM accounts ORDER BY id LIMIT 1")
        crm.execute("UPDATE accounts SET email = 'granted@example.com' WHERE id = %s", (account,))  # mapped
        for column, value in (("tier", "A"), ("owner", "someone"), ("industry", "none")):  # unmapped
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                crm.execute(f"UPDATE accounts SET {column} = %s WHERE id = %s", (value, account))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            crm.execute("DELETE FROM accounts WHERE id = %s", (account,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            crm.execute("CREATE TABLE public.anything (id int)")
    with psycopg.connect(**{**login, **{"dbname": "erp"}}, autocommit=True) as erp:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            erp.execute("UPDATE customers SET payment_terms = 'COD'")  # the ERP owns it, the CRM has no column


def test_the_store_role_keeps_the_sync_and_registry_tables_and_nothing_else(restricted: Harness) -> None:
    """deploy/sql/store.sql in a new store database: the sync's and the registry's tables are made by
    the store role, which may create no other schema nor a table outside its own."""
    h = restricted
    with h.connect("postgres") as owner:
        owner.execute("DROP DATABASE IF EXISTS store_roles")
        owner.execute("CREATE DATABASE store_roles")
    with psycopg.connect(**{**h.conninfo("store_roles")}, autocommit=True) as owner:
        owner.execute((REPO / "deploy" / "sql" / "store.sql").read_text(encoding="utf-8"))
        owner.execute(f"ALTER ROLE crm_erp_sync_store PASSWORD '{PASSWORD}'")
    login = {**h.conninfo("store_roles"), "user": "crm_erp_sync_store", "password": PASSWORD}
    store = Store(login)
    store.migrate()
    store.migrate()  # every start migrates: the second finds everything there
    store.close()
    RegistryStore(login).close()
    with psycopg.connect(**login, autocommit=True) as conn:
        owners = {r[0] for r in conn.execute("SELECT DISTINCT tableowner FROM pg_tables"
                                             " WHERE schemaname IN ('sync', 'registry')")}
        assert owners == {"crm_erp_sync_store"}, owners
        for ddl in ("CREATE SCHEMA other", "CREATE TABLE public.anything (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl)


def test_a_worker_with_the_applier_role_syncs_both_ways(restricted: Harness) -> None:
    h = restricted
    with running(h.spawn("capture")):  # capture keeps the owner's login; the worker gets the applier's
        wait_for_capture(h)
        applier = applier_config(h)
        with running(h.spawn_command([*h.cli()[:4], str(applier), "worker"], "worker.log")):
            wait_for_identity(h)
            edits_sync_both_ways(h, "021-12340000", 4242)
    done = subprocess.run([*h.cli()[:4], str(applier), "doctor"], capture_output=True, text=True, check=False,
                          timeout=120)
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert done.returncode == 0 and not failed, done.stdout


def test_capture_runs_with_the_capture_role_on_the_dbas_publication(restricted: Harness) -> None:
    """Debezium logged in as the capture role (REPLICATION, SELECT on the captured tables), relying on the
    publication deploy/sql/ created (publication.autocreate.mode: disabled): a CRM edit reaches the ERP."""
    h = restricted
    connectors = h.root / "connectors-dba-publication"
    connectors.mkdir(exist_ok=True)
    for source in ("crm", "erp"):
        definition = json.loads((REPO / "connectors" / f"{source}-postgres.json").read_text(encoding="utf-8"))
        definition["config"]["publication.autocreate.mode"] = "disabled"
        (connectors / f"{source}-postgres.json").write_text(json.dumps(definition), encoding="utf-8")
    for system in ("crm", "erp"):  # the DBA's publication as the script makes it (an owner's capture widens it)
        with h.connect(system) as owner:
            owner.execute((REPO / "deploy" / "sql" / f"{system}.sql").read_text(encoding="utf-8"))
    with h.connect("crm") as crm:  # it holds exactly the captured tables
        published = {r[0] for r in crm.execute("SELECT tablename FROM pg_publication_tables"
                                               " WHERE pubname = 'crm_erp_sync_crm'")}
    assert {"accounts", "products", "opportunities"} <= published and "contacts" not in published, published
    capture = role_config(h, "crm_erp_sync_capture", capture={"connectors_dir": str(connectors)})
    if h.capture_mode == "connect":  # the connectors log in with the Connect worker's environment: the capture role's
        h.kill_connect()
        url = h.start_connect(capture)
        capture = role_config(h, "crm_erp_sync_capture",
                              capture={"connectors_dir": str(connectors), "connect_url": url})
    with running(h.spawn_command([*h.cli()[:4], str(capture), "capture"], "capture-role.log")):
        wait_for_capture(h)
        with running(h.spawn("worker", log_name="worker.log")):
            wait_for_identity(h)
            crm_id, erp_id = h.linked_pair()
            with h.connect("crm") as crm:
                crm.execute("UPDATE accounts SET address = '最小权限路1号' WHERE id = %s", (crm_id,))
            with h.connect("erp") as erp:
                wait_for(lambda: scalar(erp, "SELECT address FROM customers WHERE cust_no = %s", erp_id)
                         == "最小权限路1号", 90, 0.5, "the CRM edit captured by the capture role, in the ERP")
            with h.connect("crm") as crm:  # the slots are streamed by the capture role's login, and only by it

                def streaming() -> list[tuple[str, str]]:
                    return sorted(crm.execute("SELECT r.slot_name, s.usename FROM pg_replication_slots r"
                                              " LEFT JOIN pg_stat_replication s ON s.pid = r.active_pid").fetchall())

                wait_for(lambda: {u for _, u in streaming()} == {"crm_erp_sync_capture"}, 60, 0.5,
                         f"the capture role streaming (slots and their users: {streaming()})")
