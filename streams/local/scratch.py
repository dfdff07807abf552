"""Scratch folders under /tmp for a test's or a benchmark's own stack, removed when it ends well.

A stack's folder holds its PostgreSQL cluster, Kafka's log segments and the processes' logs: a
100,000-account benchmark leaves ~2.4 GB. It is removed when the block using it ends without an
error (and ``failed()`` says nothing failed); otherwise it is kept and its path said on stderr, for
reading the logs. ``SYNC_KEEP_STATE=1`` keeps every folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

KEEP_ENV = "SYNC_KEEP_STATE"
PREFIX = "crm-erp-sync-"


def nothing_failed() -> bool:
    return False


@contextmanager
def scratch_dir(name: str, failed: Callable[[], bool] = nothing_failed, parent: str = "/tmp") -> Iterator[Path]:
    """A new folder ``<parent>/crm-erp-sync-<name>-*`` the postgres user can reach, removed on a clean exit."""
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-", dir=parent))
    os.chmod(root, 0o755)  # when run as root, PostgreSQL runs as postgres and needs to reach its data dir
    try:
        yield root
    except BaseException:
        kept(root, "it ended with an error")
        raise
    if failed():
        kept(root, "a test that used it failed")
    elif os.environ.get(KEEP_ENV) == "1":
        kept(root, f"{KEEP_ENV}=1")
    else:
        try:
            shutil.rmtree(root)
        except OSError as exc:
            print(f"crm-erp-sync: could not remove {root}: {exc}; delete it by hand", file=sys.stderr)


def kept(root: Path, why: str) -> None:
    print(f"crm-erp-sync: kept {root} ({why}); delete it when done", file=sys.stderr)
