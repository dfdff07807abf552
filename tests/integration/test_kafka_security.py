"""The sync on a broker with a SASL_SSL listener: SCRAM-SHA-512 logins, TLS from a CA the test makes, ACLs.

The sync's principal holds only its own topics (by prefix) and consumer group; capture, the worker
and the CLI verify the broker's certificate. A wrong password and an unauthorised topic are one
clear error line each, not a retry loop or a traceback.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams.local.harness import REPO, Harness, running, scalar, wait_for, wait_for_capture, wait_for_identity
from streams.local.kafka import Scram
from streams.local.scratch import scratch_dir

pytestmark = pytest.mark.integration
SYNC_USER = "crm-erp-sync"
SYNC_PREFIXES = ("crm.", "erp.", "sync.", "canonical.", "_crm-erp-sync.", "__debezium-heartbeat.")


def make_tls(folder: Path) -> tuple[Path, Path]:
    """A CA, and a broker key + certificate for 127.0.0.1 signed by it: (keystore PEM, CA PEM)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=crm-erp-sync test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.crt", "-days", "2", "-extfile", "san.cnf")
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8")
    keystore = folder / "broker-keystore.pem"
    keystore.write_text((folder / "broker.pk8").read_text() + (folder / "broker.crt").read_text(), encoding="utf-8")
    return keystore, folder / "ca.pem"


def grant_sync_principal(h: Harness) -> None:
    """ACLs: the sync's topics by prefix and its consumer group, nothing else."""
    principal = f"User:{SYNC_USER}"
    bindings = [AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, principal, "*",
                           AclOperation.ALL, AclPermissionType.ALLOW) for prefix in SYNC_PREFIXES]
    bindings.append(AclBinding(ResourceType.GROUP, "crm-erp-sync", ResourcePatternType.PREFIXED, principal, "*",
                               AclOperation.ALL, AclPermissionType.ALLOW))
    admin = AdminClient(h.client_config())
    for fut in admin.create_acls(bindings, request_timeout=30).values():
        fut.result()


@pytest.fixture(scope="module")
def secured(failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_dir("sasl", failures) as root:
        keystore, ca = make_tls(root / "tls")
        scram = Scram("admin", secrets.token_urlsafe(12), {SYNC_USER: secrets.token_urlsafe(12)}, keystore, ca)
        h = Harness(root, scram=scram, capture_mode="embedded")
        try:
            grant_sync_principal(h.start())
            yield h
        finally:
            h.stop()


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("%")]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, lines
    return lines[0]


def test_a_wrong_password_is_one_clear_line(secured: Harness) -> None:
    done = subprocess.run(secured.cli("worker"), capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "CRM_ERP_SYNC__KAFKA__SASL_PASSWORD": "wrong-password"})
    line = _one_line_error(done)
    assert "refused the login" in line and "sasl_password" in line, (line, done.stderr)


def test_an_unauthorised_topic_is_one_clear_line(secured: Harness) -> None:
    profile = (REPO / "schemas" / "mappings" / "demo.yaml").read_text(encoding="utf-8").replace(
        "canonical_schema: ../canonical/customer.avsc",
        f"canonical_schema: {REPO / 'schemas' / 'canonical' / 'customer.avsc'}")
    assert "topic: canonical.customer.v1" in profile
    forbidden = secured.root / "forbidden.yaml"
    forbidden.write_text(profile.replace("topic: canonical.customer.v1", "topic: other-team.customer.v1"),
                         encoding="utf-8")
    done = subprocess.run(secured.cli("worker"), capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "CRM_ERP_SYNC__PROCESSORS__PROFILES": f'["{forbidden}"]'})
    line = _one_line_error(done)
    assert "other-team.customer.v1" in line and "authoriz" in line.lower(), line


def test_capture_worker_and_cli_sync_over_sasl_ssl(secured: Harness) -> None:
    h = secured
    with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
        wait_for_capture(h)
        wait_for_identity(h)
        with h.connect("sync") as conn:
            crm_id, erp_id = conn.execute(
                "SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id LIMIT 1").fetchone()
        with h.connect("crm") as crm:
            crm.execute("UPDATE accounts SET email = 'secured@example.com' WHERE id = %s", (crm_id,))
        with h.connect("erp") as erp:
            wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id)
                     == "secured@example.com", 90, 0.5, "the CRM edit in the ERP over SASL_SSL")
        status = subprocess.run(h.cli("status"), capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
        assert "broker    ok" in status.stdout, status.stdout
        assert "topic sync.changes.customer" in status.stdout and "MISSING" not in status.stdout, status.stdout
