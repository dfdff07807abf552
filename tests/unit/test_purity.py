"""Pure modules import no Kafka, database or Faust client."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["streams.registry.compat", "streams.capture.connector", "streams.settings", "streams.errors",
        "streams.envelope", "streams.mapping.convert", "streams.mapping.profile", "streams.identity.match",
        "streams.reconcile.core", "streams.reconcile.records"]
FORBIDDEN = ("confluent_kafka", "psycopg", "faust", "jpype")


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_client(module: str) -> None:
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}];"
            " print(','.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{module} pulls in {result.stdout.strip()}"
