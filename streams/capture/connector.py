"""Connector definitions: the ``connectors/*.json`` files in Kafka Connect REST form. Pure.

The same file is PUT to a Kafka Connect cluster as is (with ``config.providers`` ``env``/``file``
configured on the worker), or run by the embedded engine, which resolves the placeholders here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streams.errors import ConfigError
from streams.settings import Settings

PLACEHOLDER = re.compile(r"\$\{(?P<provider>[a-zA-Z]+):(?:(?P<path>[^}:]*):)?(?P<key>[^}]*)\}")

# Connect-worker-only settings the embedded engine must not see.
CONNECT_ONLY_PREFIXES = ("producer.override.", "topic.creation.", "tasks.max")


def load_connector(path: Path) -> dict[str, Any]:
    """Read one connector file ``{"name": ..., "config": {...}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read connector file {path}: {exc.strerror}",
            hint="set capture.connectors_dir to the folder holding crm-postgres.json and erp-postgres.json",
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"connector file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "name" not in data:
        raise ConfigError(f"connector file {path} must be {{\"name\": ..., \"config\": {{...}}}} (Kafka Connect form)")
    for key in ("connector.class", "topic.prefix"):
        if key not in data["config"]:
            raise ConfigError(f"connector file {path} lacks config key {key!r}")
    return data


def _read_properties(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def resolve_placeholders(
    config: Mapping[str, str],
    env: Mapping[str, str],
    read_file: Callable[[str], dict[str, str]] = _read_properties,
) -> dict[str, str]:
    """Replace ``${env:NAME}`` and ``${file:/path:key}`` as Kafka Connect's providers would.

    Raises :class:`ConfigError` naming the connector key and the missing variable.
    """

    def substitute(key: str, value: str) -> str:
        def one(match: re.Match[str]) -> str:
            provider, path, name = match["provider"], match["path"], match["key"]
            if provider == "env":
                if name not in env:
                    raise ConfigError(f"connector key {key!r} needs env variable {name}, which is not set")
                return env[name]
            if provider == "file" and path:
                try:
                    values = read_file(path)
                except OSError as exc:
                    raise ConfigError(f"connector key {key!r}: cannot read {path}: {exc.strerror}") from exc
                if name not in values:
                    raise ConfigError(f"connector key {key!r}: {path} has no key {name!r}")
                return values[name]
            raise ConfigError(f"connector key {key!r}: unsupported placeholder {match.group(0)!r}")

        return PLACEHOLDER.sub(one, value)

    return {key: substitute(key, str(value)) for key, value in config.items()}


def embedded_properties(config: Mapping[str, str], name: str, offsets_file: Path, flush_ms: int) -> dict[str, str]:
    """Engine properties: the resolved connector config plus what a Connect worker would add."""
    props = {k: v for k, v in config.items() if not k.startswith(CONNECT_ONLY_PREFIXES)}
    props.update(
        {
            "name": name,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(offsets_file),
            "offset.flush.interval.ms": str(flush_ms),
            "offset.flush.timeout.ms": "10000",
            "errors.max.retries": "-1",
            "errors.retry.delay.initial.ms": "500",
            "errors.retry.delay.max.ms": "10000",
        }
    )
    return props


def topic_partitions(config: Mapping[str, str]) -> int:
    """Partitions for topics this connector creates (``topic.creation.default.partitions``)."""
    return max(1, int(config.get("topic.creation.default.partitions", "1")))


def placeholder_env(settings: Settings, source: str) -> dict[str, str]:
    """Values for the connector's ``${env:...}`` placeholders, from the settings (then the real env)."""
    db = settings.database(source)
    prefix = source.upper()
    env = dict(os.environ)
    env.update(
        {
            f"{prefix}_DB_HOST": db.host,
            f"{prefix}_DB_PORT": str(db.port),
            f"{prefix}_DB_USER": db.user,
            f"{prefix}_DB_PASSWORD": db.resolved_password() or "",
            f"{prefix}_DB_NAME": db.dbname,
            f"{prefix}_DB_SSLMODE": db.sslmode,
            "SCHEMA_REGISTRY_URL": settings.registry.url,
        }
    )
    return env
