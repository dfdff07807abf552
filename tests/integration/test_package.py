"""The built wheel runs outside the repository: a worker installed from it syncs, from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from streams.local.harness import REPO, running, scalar, scratch_harness, wait_for, wait_for_capture, wait_for_identity
from streams.local.scratch import scratch_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(failures: Callable[[], bool]) -> Iterator[Path]:
    """A fresh venv with only the wheel installed in it (its dependencies seen from the project's venv)."""
    with scratch_dir("wheel", failures) as root:
        source = root / "src"  # a copy of the tracked files: the build leaves nothing in the repository
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True)
        files = [name for name in listed.stdout.splitlines() if (REPO / name).is_file()]
        for name in files:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(root / "dist"), str(source)], check=True, cwd=root)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
        wheel = next((root / "dist").glob("crm_erp_sync-*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                        "-q", str(wheel)], check=True)
        shutil.rmtree(source)
        yield venv


def test_the_wheel_carries_schemas_profiles_connectors_and_monitoring(installed: Path) -> None:
    code = ("import streams, streams.resources as r; from streams.mapping.profile import load_profiles;"
            " from streams.settings import load_settings; s = load_settings(None);"
            " load_profiles(s.processors.profiles);"
            " print(streams.__file__); print(r.root()); print(s.capture.connectors_dir)")
    with scratch_dir("elsewhere") as elsewhere:
        run = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=elsewhere, capture_output=True,
                             text=True, check=False)
    assert run.returncode == 0, run.stderr
    package, root, connectors = (Path(p) for p in run.stdout.split())
    assert installed in package.parents and REPO not in package.parents  # the installed copy, not the checkout
    assert root == package.parent / "_resources"
    assert sorted(p.name for p in connectors.glob("*.json")) == ["crm-postgres.json", "erp-postgres.json"]
    assert (root / "schemas" / "sync" / "change.avsc").is_file()
    assert (root / "monitoring" / "prometheus" / "alerts.yml").is_file()


def test_a_worker_installed_from_the_wheel_syncs_from_another_directory(installed: Path) -> None:
    # The owner's login: this config's profiles are the wheel's defaults, not the harness's (whose roles it renders).
    with scratch_harness("wheelrun", least_privilege=False) as h:
        # A production config with no path in it: profiles, schemas and connectors come from the wheel.
        config = yaml.safe_load(h.write_config().read_text(encoding="utf-8"))
        del config["processors"]["profiles"], config["capture"]["connectors_dir"]
        config["processors"]["documents"] = []
        prod = h.root / "etc" / "prod.yaml"
        prod.parent.mkdir()
        prod.write_text(yaml.safe_dump(config), encoding="utf-8")
        with running(h.spawn("capture")):
            wait_for_capture(h)
            worker = h.spawn_command([str(installed / "bin" / "crm-erp-sync"), "--config", str(prod), "worker"],
                                     "worker.log", cwd=h.root / "etc")
            with running(worker):
                wait_for_identity(h)
                crm_id, erp_id = h.linked_pair()
                with h.connect("crm") as crm:
                    crm.execute("UPDATE accounts SET email = 'from-the-wheel@example.com' WHERE id = %s", (crm_id,))
                with h.connect("erp") as erp:
                    wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id)
                             == "from-the-wheel@example.com", 90, 0.5, "the edit in the ERP")
