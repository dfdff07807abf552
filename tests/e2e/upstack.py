"""Helpers for driving `crm-erp-sync up` through the real CLI in end-to-end tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from streams.local.harness import REPO, wait_for
from streams.local.ports import free_ports


def write_config(root: Path, **sections: dict[str, object]) -> Path:
    """A sync.yaml for `up` under ``root``, every port drawn free; ``sections`` override keys."""
    pg, broker, controller, connect, registry, prometheus, capture_metrics, worker_metrics = free_ports(8)
    cfg = {"local": {"state_dir": str(root / "state"), "postgres_port": pg, "broker_port": broker,
                     "controller_port": controller, "connect_port": connect,
                     "registry_port": registry, "prometheus_port": prometheus,
                     "capture_metrics_port": capture_metrics, "worker_metrics_port": worker_metrics,
                     "seed_accounts": 40},
           "capture": {"connectors_dir": str(REPO / "connectors")},
           "processors": {"profiles": [str(REPO / "schemas" / "mappings" / name)
                                       for name in ("demo.yaml", "demo-products.yaml")],
                          "documents": [str(REPO / "schemas" / "mappings" / "demo-orders.yaml")]}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)  # type: ignore[attr-defined]
    path = root / "sync.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def cli(config: Path, *args: str) -> list[str]:
    """The CLI's argv with ``config``."""
    return [sys.executable, "-m", "streams", "--config", str(config), *args]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a start-up error (exit status 2, no traceback)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def db(config: Path, dbname: str) -> psycopg.Connection[object]:
    """An autocommit connection to one database of the embedded cluster."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    password = (Path(cfg["local"]["state_dir"]) / "secrets" / "db-password").read_text(encoding="utf-8").strip()
    return psycopg.connect(host="127.0.0.1", port=cfg["local"]["postgres_port"], dbname=dbname,
                           user="sync", password=password, autocommit=True)


def start_up(config: Path, log: Path, *options: str) -> subprocess.Popen[str]:
    """Start `up` (with ``options``) in the background, output appended to ``log``."""
    out = log.open("a", encoding="utf-8")
    return subprocess.Popen(cli(config, "up", *options), stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def stop_up(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, and a clean exit."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 0


def wait_up(proc: subprocess.Popen[str], log: Path, times: int = 1) -> None:
    """Wait until `up` reported it is up (``times`` times in ``log``) while still running."""
    wait_for(lambda: log.read_text(encoding="utf-8").count("crm-erp-sync is up") >= times or proc.poll() is not None,
             180, 0.5, "`up` to report it is up")
    assert proc.poll() is None, log.read_text(encoding="utf-8")
