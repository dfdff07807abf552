"""Where the files the sync reads at run time are: Avro schemas, mapping profiles, connector templates, monitoring.

In a source checkout they are the repository's top-level ``schemas/``, ``connectors/`` and
``monitoring/``; in an installed wheel, the same trees under ``streams/_resources/`` (``setup.py``
copies them there when it builds the wheel). Either way ``resource("schemas", "sync")`` is a path
that exists, whatever the current directory.
"""

from __future__ import annotations

from pathlib import Path

TREES = ("schemas", "connectors", "monitoring")
_PACKAGE = Path(__file__).resolve().parent


def root() -> Path:
    """The folder holding ``schemas/``, ``connectors/`` and ``monitoring/``."""
    packaged = _PACKAGE / "_resources"
    return packaged if (packaged / "schemas").is_dir() else _PACKAGE.parent


def resource(*parts: str) -> Path:
    """A path inside one of the trees, e.g. ``resource("schemas", "mappings", "demo.yaml")``."""
    if not parts or parts[0] not in TREES:
        raise ValueError(f"not a resource tree: {parts[:1]} (one of {', '.join(TREES)})")
    return root().joinpath(*parts)
