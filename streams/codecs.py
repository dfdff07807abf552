"""Confluent Avro + registry codecs, built from ``schemas/*.avsc`` and registered once.

Decoding reads the schema id from the Confluent wire format (any topic); encoding registers the
record's ``.avsc`` under ``<topic>-value``. Never Faust's pickle: data comes from the network
(the agents read raw bytes and decode here).
The bytes are exactly what the official ``AvroSerializer`` writes and ``AvroDeserializer`` reads
(tests check both ways); fastavro does the work directly, with schemas cached parsed per id.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams import resources
from streams.errors import TerminalError, TransientError
from streams.settings import Settings


def _registry_error(what: str, exc: Exception) -> Exception:
    """A registry failure as this project's error: unreachable or 5xx is transient, a refusal terminal."""
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status is not None and 400 <= status < 500:
            return TerminalError(f"{what}: the schema registry refused it: HTTP {status} {exc.error_message}")
        return TransientError(f"{what}: the schema registry failed: HTTP {status} {exc.error_message}")
    return TransientError(f"{what}: the schema registry is not reachable: {type(exc).__name__}: {exc}")

SCHEMAS = resources.resource("schemas")


def schema_text(relative: str) -> str:
    """An ``.avsc`` under ``schemas/``, with named types it references inlined (Metadata)."""
    schema = json.loads((SCHEMAS / relative).read_text(encoding="utf-8"))
    for fld in schema.get("fields", []):
        if fld["type"] == "Metadata":
            fld["type"] = json.loads((SCHEMAS / "canonical" / "metadata.avsc").read_text(encoding="utf-8"))
    return json.dumps(schema)


class AvroDecode:
    """Decode Confluent wire-format Avro of any registered schema.

    The same records as the official ``AvroDeserializer``, without its per-call rule and
    schema-expansion machinery (the largest codec cost per event): schemas by id are cached parsed.
    """

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}

    def _schema(self, schema_id: int) -> Any:
        schema = self._parsed.get(schema_id)
        if schema is None:
            try:
                text = self._client.get_schema(schema_id).schema_str
            except Exception as exc:  # httpx errors and SchemaRegistryError: sorted into transient / terminal
                raise _registry_error(f"schema id {schema_id}", exc) from exc
            if text is None:
                raise ValueError(f"schema id {schema_id} has no schema text in the registry")
            schema = self._parsed[schema_id] = fastavro.parse_schema(json.loads(text))
        return schema

    def loads(self, data: bytes) -> Any:
        """The record in ``data``: magic byte 0, a 4-byte schema id, the Avro body."""
        if len(data) <= 5 or data[0] != 0:
            raise ValueError(f"not Confluent wire-format Avro ({len(data)} bytes, first byte {data[:1]!r}):"
                             " expected magic byte 0 and a 4-byte schema id")
        return fastavro.schemaless_reader(io.BytesIO(data[5:]), self._schema(int.from_bytes(data[1:5], "big")), None)


class AvroEncode:
    """Encode records of one ``.avsc`` for one topic in Confluent wire format.

    The schema is registered under ``<topic>-value`` on first use (as the official serializer's
    auto-registration does), or under ``subject`` when given (a record-name subject, for records of
    any topic); then each record is one fastavro write after the 5-byte header.
    """

    def __init__(self, client: SchemaRegistryClient, topic: str, schema: str, subject: str | None = None) -> None:
        self._client, self._subject, self._text = client, subject or f"{topic}-value", schema
        self._parsed = fastavro.parse_schema(json.loads(schema))
        self._header: bytes | None = None

    def dumps(self, record: Any) -> bytes:
        """``record`` as bytes (registering the schema on first use)."""
        if self._header is None:
            try:
                schema_id = self._client.register_schema(self._subject, Schema(self._text, "AVRO"))
            except Exception as exc:  # a refusal (409: incompatible) cannot be retried away
                raise _registry_error(f"registering {self._subject}", exc) from exc
            self._header = b"\x00" + int(schema_id).to_bytes(4, "big")
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self._parsed, record)
        return out.getvalue()


def codecs_for(settings: Settings, outputs: dict[str, str], subjects: dict[str, str] | None = None
               ) -> tuple[AvroDecode, dict[str, AvroEncode]]:
    """The decoder of any registered schema, and an encoder per ``{topic: avsc path under schemas/}``.

    ``subjects`` (``{subject: avsc path}``): encoders registered under those subjects, keyed by them.
    """
    client = SchemaRegistryClient(settings.registry.client_config())
    encoders = {topic: AvroEncode(client, topic, schema_text(avsc)) for topic, avsc in outputs.items()}
    encoders |= {subject: AvroEncode(client, subject, schema_text(avsc), subject)
                 for subject, avsc in (subjects or {}).items()}
    return AvroDecode(client), encoders
