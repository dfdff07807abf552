"""Confluent Avro + registry codecs for Faust, built from ``schemas/*.avsc`` and registered once.

Decoding reads the schema id from the Confluent wire format (any topic); encoding registers the
record's ``.avsc`` under ``<topic>-value``. Never Faust's pickle: data comes from the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from faust.serializers import codecs

from streams.settings import Settings

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
DECODE = "confluent-avro"


def schema_text(relative: str) -> str:
    """An ``.avsc`` under ``schemas/``, with named types it references inlined (Metadata)."""
    schema = json.loads((SCHEMAS / relative).read_text(encoding="utf-8"))
    for fld in schema.get("fields", []):
        if fld["type"] == "Metadata":
            fld["type"] = json.loads((SCHEMAS / "canonical" / "metadata.avsc").read_text(encoding="utf-8"))
    return json.dumps(schema)


class AvroDecode(codecs.Codec):
    """Decode Confluent wire-format Avro with the official deserializer."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        super().__init__()
        self._deserializer = AvroDeserializer(client)

    def _loads(self, s: bytes) -> Any:
        return self._deserializer(s, None)

    def _dumps(self, obj: Any) -> bytes:
        raise TypeError("the decode-only Avro codec cannot encode")


class AvroEncode(codecs.Codec):
    """Encode records of one ``.avsc`` for one topic with the official serializer."""

    def __init__(self, client: SchemaRegistryClient, topic: str, schema: str) -> None:
        super().__init__()
        self._serializer = AvroSerializer(client, schema)
        self._decode = AvroDeserializer(client)
        self._ctx = SerializationContext(topic, MessageField.VALUE)

    def _dumps(self, obj: Any) -> bytes:
        data = self._serializer(obj, self._ctx)
        assert data is not None
        return bytes(data)

    def _loads(self, s: bytes) -> Any:
        return self._decode(s, None)


def encoder_name(topic: str) -> str:
    """The registered codec name for values written to ``topic``."""
    return f"avro:{topic}"


def register(settings: Settings, outputs: dict[str, str]) -> SchemaRegistryClient:
    """Register the decode codec and one encode codec per ``{topic: avsc path}``; the client."""
    client = SchemaRegistryClient(settings.registry.client_config())
    codecs.register(DECODE, AvroDecode(client))
    for topic, avsc in outputs.items():
        codecs.register(encoder_name(topic), AvroEncode(client, topic, schema_text(avsc)))
    return client
