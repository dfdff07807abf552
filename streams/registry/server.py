"""A Confluent-Schema-Registry-compatible HTTP server: the subset the official clients use.

Served for confluent-kafka's ``SchemaRegistryClient``/``AvroSerializer``/``AvroDeserializer`` and
Debezium's Java ``AvroConverter``. Production points ``registry.url`` at a real registry instead.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import fastavro
from prometheus_client import CONTENT_TYPE_LATEST as PROM_CONTENT_TYPE
from prometheus_client import generate_latest

from streams import metrics
from streams.registry import compat
from streams.registry.store import RegistryStore, Version

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class ApiError(Exception):
    """An error answer in the registry's format."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def subject_not_found(subject: str) -> ApiError:
    """40401."""
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


REQUIRED = {"record": ("name", "fields"), "error": ("name", "fields"), "enum": ("name", "symbols"),
            "fixed": ("name", "size"), "array": ("items",), "map": ("values",)}


def _check_structure(schema: Any) -> None:
    """Required attributes fastavro does not insist on (a record without fields, say)."""
    if isinstance(schema, list):
        for branch in schema:
            _check_structure(branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            _check_structure(kind)
            return
        for attr in REQUIRED.get(str(kind), ()):
            if attr not in schema:
                raise ApiError(422, 42201, f"Invalid Avro schema: a {kind} needs '{attr}'")
        for fld in schema.get("fields", []) if kind in ("record", "error") else []:
            if not isinstance(fld, dict) or "name" not in fld or "type" not in fld:
                raise ApiError(422, 42201, "Invalid Avro schema: every field needs 'name' and 'type'")
            _check_structure(fld["type"])
        if kind == "array":
            _check_structure(schema["items"])
        if kind == "map":
            _check_structure(schema["values"])


def canonical_schema(schema_type: str, text: str) -> str:
    """Compact, validated form of a schema text; raises 422 if it is not a valid schema."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, 42201, f"Invalid schema: not JSON ({exc.msg})") from exc
    if schema_type == "AVRO":
        _check_structure(parsed)
        try:
            fastavro.parse_schema(parsed, _write_hint=False)
        except Exception as exc:  # fastavro raises several unrelated types for bad schemas
            raise ApiError(422, 42201, f"Invalid Avro schema: {exc}") from exc
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)


class Registry:
    """The API's behaviour, independent of HTTP."""

    def __init__(self, store: RegistryStore, default_compatibility: str) -> None:
        self.store = store
        self.default_compatibility = default_compatibility

    def level(self, subject: str) -> str:
        """Effective compatibility level of a subject."""
        return self.store.compatibility(subject) or self.store.compatibility("") or self.default_compatibility

    def _version(self, subject: str, version: str) -> Version:
        versions = self.store.versions(subject)
        if not versions:
            raise subject_not_found(subject)
        if version in ("latest", "-1"):
            return versions[-1]
        try:
            wanted = int(version)
        except ValueError as exc:
            raise ApiError(422, 42202, f"Invalid version {version!r}") from exc
        for v in versions:
            if v.version == wanted:
                return v
        raise ApiError(404, 40402, f"Version {wanted} not found.")

    @staticmethod
    def _body_schema(body: dict[str, Any]) -> tuple[str, str]:
        if not isinstance(body.get("schema"), str):
            raise ApiError(422, 42201, "Invalid schema: the body needs a 'schema' string")
        if body.get("references"):
            raise ApiError(422, 42201, "Schema references are not supported by the embedded registry")
        schema_type = body.get("schemaType", "AVRO")
        if schema_type not in ("AVRO", "JSON", "PROTOBUF"):
            raise ApiError(422, 42201, f"Unknown schemaType {schema_type!r}")
        return schema_type, canonical_schema(schema_type, body["schema"])

    @staticmethod
    def _describe(v: Version) -> dict[str, Any]:
        out: dict[str, Any] = {"subject": v.subject, "version": v.version, "id": v.schema_id, "schema": v.schema}
        if v.schema_type != "AVRO":
            out["schemaType"] = v.schema_type
        return out

    def _problems(self, subject: str, schema_type: str, canonical: str, against: list[Version]) -> list[str]:
        if schema_type != "AVRO":
            return []
        return compat.check(self.level(subject), json.loads(canonical), [json.loads(v.schema) for v in against])

    def register(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /subjects/{subject}/versions."""
        schema_type, canonical = self._body_schema(body)
        versions = self.store.versions(subject)
        for v in versions:
            if v.schema == canonical and v.schema_type == schema_type:
                return {"id": v.schema_id}
        problems = self._problems(subject, schema_type, canonical, versions)
        if problems:
            raise ApiError(
                409,
                409,
                f"Schema being registered is incompatible with an earlier schema for subject '{subject}' "
                f"({self.level(subject)}): " + "; ".join(problems[:5]),
            )
        return {"id": self.store.register(subject, schema_type, canonical).schema_id}

    def lookup(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /subjects/{subject}: is this schema registered under the subject?"""
        schema_type, canonical = self._body_schema(body)
        versions = self.store.versions(subject)
        if not versions:
            raise subject_not_found(subject)
        for v in versions:
            if v.schema == canonical and v.schema_type == schema_type:
                return self._describe(v)
        raise ApiError(404, 40403, "Schema not found")

    def test_compatibility(self, subject: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """POST /compatibility/subjects/{subject}/versions[/{version}]."""
        schema_type, canonical = self._body_schema(body)
        versions = self.store.versions(subject)
        if version is not None and versions:
            versions = [self._version(subject, version)]
        if schema_type != "AVRO" or not versions:
            return {"is_compatible": True, "messages": []}
        level = self.level(subject)
        if version is not None:
            level = level.removesuffix("_TRANSITIVE")
        elif not level.endswith("_TRANSITIVE") and level != "NONE":
            level += "_TRANSITIVE"  # "all versions" means every one
        problems = compat.check(level, json.loads(canonical), [json.loads(v.schema) for v in versions])
        return {"is_compatible": not problems, "messages": problems}

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """GET /schemas/ids/{id}."""
        found = self.store.schema_by_id(schema_id)
        if found is None:
            raise ApiError(404, 40403, f"Schema {schema_id} not found")
        out: dict[str, Any] = {"schema": found[1]}
        if found[0] != "AVRO":
            out["schemaType"] = found[0]
        return out


Route = tuple[str, re.Pattern[str], Callable[..., Any]]


def _routes(reg: Registry) -> list[Route]:
    def config_get(subject: str = "", q: dict[str, str] | None = None) -> dict[str, Any]:
        level = reg.store.compatibility(subject)
        if level is None:
            if subject and (q or {}).get("defaultToGlobal", "false").lower() != "true":
                raise ApiError(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
            level = reg.store.compatibility("") or reg.default_compatibility
        return {"compatibilityLevel": level}

    def config_put(subject: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        level = str((body or {}).get("compatibility", "")).upper()
        if level not in compat.LEVELS:
            raise ApiError(422, 42203, f"Invalid compatibility level {level!r}; one of {', '.join(compat.LEVELS)}")
        reg.store.set_compatibility(subject, level)
        return {"compatibility": level}

    def config_delete(subject: str) -> dict[str, Any]:
        previous = reg.level(subject)
        reg.store.set_compatibility(subject, None)
        return {"compatibilityLevel": previous}

    def versions(subject: str) -> list[int]:
        found = reg.store.versions(subject)
        if not found:
            raise subject_not_found(subject)
        return [v.version for v in found]

    def delete_subject(subject: str, q: dict[str, str]) -> list[int]:
        deleted = reg.store.delete_subject(subject, q.get("permanent", "false").lower() == "true")
        if not deleted:
            raise subject_not_found(subject)
        return deleted

    def delete_version(subject: str, version: str) -> int:
        v = reg._version(subject, version)
        reg.store.delete_version(subject, v.version)
        return v.version

    s = r"(?P<subject>[^/]+)"
    return [
        ("GET", re.compile(r"/?"), lambda: {}),
        ("GET", re.compile(r"/subjects"), lambda q: reg.store.subjects(q.get("deleted", "false") == "true")),
        ("GET", re.compile(rf"/subjects/{s}/versions"), versions),
        ("POST", re.compile(rf"/subjects/{s}/versions"), lambda subject, body: reg.register(subject, body)),
        ("GET", re.compile(rf"/subjects/{s}/versions/(?P<version>[^/]+)"),
         lambda subject, version: reg._describe(reg._version(subject, version))),
        ("GET", re.compile(rf"/subjects/{s}/versions/(?P<version>[^/]+)/schema"),
         lambda subject, version: json.loads(reg._version(subject, version).schema)),
        ("DELETE", re.compile(rf"/subjects/{s}/versions/(?P<version>[^/]+)"), delete_version),
        ("POST", re.compile(rf"/subjects/{s}"), lambda subject, body: reg.lookup(subject, body)),
        ("DELETE", re.compile(rf"/subjects/{s}"), delete_subject),
        ("GET", re.compile(r"/schemas/ids/(?P<sid>\d+)"), lambda sid: reg.schema_by_id(int(sid))),
        ("GET", re.compile(r"/schemas/ids/(?P<sid>\d+)/schema"),
         lambda sid: json.loads(reg.schema_by_id(int(sid))["schema"])),
        ("GET", re.compile(r"/schemas/ids/(?P<sid>\d+)/versions"),
         lambda sid: [{"subject": sub, "version": ver} for sub, ver in reg.store.subjects_of(int(sid))]),
        ("GET", re.compile(r"/schemas/ids/(?P<sid>\d+)/subjects"),
         lambda sid: sorted({sub for sub, _ in reg.store.subjects_of(int(sid))})),
        ("GET", re.compile(r"/schemas/types"), lambda: ["AVRO", "JSON", "PROTOBUF"]),
        ("POST", re.compile(rf"/compatibility/subjects/{s}/versions/(?P<version>[^/]+)"),
         lambda subject, version, body: reg.test_compatibility(subject, version, body)),
        ("POST", re.compile(rf"/compatibility/subjects/{s}/versions"),
         lambda subject, body: reg.test_compatibility(subject, None, body)),
        ("GET", re.compile(r"/config"), lambda q: config_get("", q)),
        ("PUT", re.compile(r"/config"), lambda body: config_put("", body)),
        ("GET", re.compile(rf"/config/{s}"), config_get),
        ("PUT", re.compile(rf"/config/{s}"), config_put),
        ("DELETE", re.compile(rf"/config/{s}"), config_delete),
        ("GET", re.compile(r"/mode"), lambda: {"mode": "READWRITE"}),
    ]


def make_handler(reg: Registry) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``reg``."""
    routes = _routes(reg)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "crm-erp-sync-registry"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            metrics.REGISTRY_REQUESTS.labels(self.command, str(int(status))).inc()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            body: dict[str, Any] = {}
            length = int(self.headers.get("Content-Length") or 0)
            try:
                if length:
                    raw = self.rfile.read(length)
                    try:
                        body = json.loads(raw)
                    except json.JSONDecodeError as exc:
                        raise ApiError(400, 400, f"Request body is not JSON: {exc.msg}") from exc
                for verb, pattern, func in routes:
                    match = pattern.fullmatch(path)
                    if verb != method or not match:
                        continue
                    kwargs: dict[str, Any] = {k: unquote(v) for k, v in match.groupdict().items()}
                    names = func.__code__.co_varnames[: func.__code__.co_argcount]
                    if "body" in names:
                        kwargs["body"] = body
                    if "q" in names:
                        kwargs["q"] = query
                    self._send(200, func(**kwargs))
                    return
                if any(pattern.fullmatch(path) for _, pattern, _ in routes):
                    raise ApiError(405, 405, f"Method {method} not allowed on {path}")
                raise ApiError(404, 404, f"No such endpoint: {path}")
            except ApiError as err:
                self._send(err.status, {"error_code": err.code, "message": err.message})
            except Exception as exc:  # the server must answer, not die, on an unexpected fault
                log.exception("registry request %s %s failed", method, self.path)
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error_code": 50001, "message": str(exc)})

        def do_GET(self) -> None:
            if self.path == "/metrics":  # Prometheus scrapes the registry on its own port
                data = generate_latest()
                self.send_response(200)
                self.send_header("Content-Type", PROM_CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

    return Handler


class RegistryServer:
    """The HTTP server in a background thread; ``serve_forever`` for a dedicated process."""

    def __init__(self, store: RegistryStore, host: str, port: int, default_compatibility: str = "BACKWARD") -> None:
        self.registry = Registry(store, default_compatibility)
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.registry))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL the server listens on."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RegistryServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the store (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.registry.store.close()
