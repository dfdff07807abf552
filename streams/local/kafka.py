"""Apache Kafka (KRaft) nodes on this machine: the embedded broker of ``up``, and clusters for tests.

Each node runs as broker and controller (combined mode) from the jars fetched by
:mod:`streams.local.jars`. Storage is formatted once under the node's folder; a node started
again keeps every topic and committed offset. A cluster of N nodes has N controllers (a static
quorum), internal topics replicated min(N, 3) times and ``min.insync.replicas`` min(N - 1, 2).
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import PreflightError
from streams.local import jars
from streams.local.java import java_binary, log4j2_properties
from streams.local.ports import free_ports, wait_listening
from streams.local.supervisor import terminate

LOG4J2 = log4j2_properties({"kafka": "kafka.server.KafkaServer", "broker": "kafka.server.BrokerServer"})


@dataclass(frozen=True)
class Scram:
    """SASL_SSL for the client listener: SCRAM-SHA-512 logins, TLS from PEM files, ACLs enforced."""

    admin_user: str
    admin_password: str
    users: dict[str, str]  # other logins: name -> password
    keystore_pem: Path  # private key (PKCS#8, unencrypted) and certificate chain of the brokers
    truststore_pem: Path  # the CA


def new_cluster_id() -> str:
    """A KRaft cluster id (16 random bytes, URL-safe base64 without padding, not starting with '-', as Kafka's)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class KafkaNode:
    """One combined broker + controller node."""

    node_id: int
    folder: Path
    port: int
    controller_port: int
    voters: str  # controller.quorum.voters of the whole cluster
    size: int = 1  # nodes in the cluster
    heap: str = "512m"
    scram: Scram | None = None
    jar_cache: Path = jars.DEFAULT_CACHE
    extra: dict[str, str] = field(default_factory=dict)
    server: jars.Bundle = jars.KAFKA  # the Kafka release it runs

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener."""
        return f"127.0.0.1:{self.port}"

    def properties(self) -> dict[str, str]:
        """The node's ``server.properties``."""
        replicas = str(min(self.size, 3))
        min_isr = str(max(1, min(self.size - 1, 2)))
        client = "SASL_SSL" if self.scram else "PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"{client}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"{client}://127.0.0.1:{self.port}",
            "inter.broker.listener.name": client,
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.folder / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",  # every topic is created on purpose, with its settings
            "unclean.leader.election.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.scram is not None:
            props.update({
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{self.scram.admin_user}" password="{self.scram.admin_password}";',
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.scram.keystore_pem),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.scram.truststore_pem),
                "ssl.endpoint.identification.algorithm": "https",
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # The controller listener is loopback PLAINTEXT: its peers are these nodes themselves.
                "super.users": f"User:{self.scram.admin_user};User:ANONYMOUS",
                "allow.everyone.if.no.acl.found": "false",
            })
        props.update(self.extra)
        return props

    def prepare(self, java: str, cluster_id: str) -> None:
        """Write the configuration; format the storage unless it was formatted before."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{k}={v}\n" for k, v in self.properties().items())
        (self.folder / "server.properties").write_text(text, encoding="utf-8")
        (self.folder / "log4j2.properties").write_text(LOG4J2, encoding="utf-8")
        if (self.folder / "data" / "meta.properties").is_file():
            return
        argv = [java, "-cp", self._classpath(), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                "-c", str(self.folder / "server.properties"), "--ignore-formatted"]
        if self.scram is not None:
            for user, password in {self.scram.admin_user: self.scram.admin_password, **self.scram.users}.items():
                argv += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise PreflightError(f"cannot format Kafka storage in {self.folder}: {detail[-1] if detail else ''}",
                                 hint=f"remove {self.folder} to start that broker afresh")

    def argv(self, java: str) -> list[str]:
        """The command that runs the node."""
        return [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}",
                "-cp", self._classpath(), "kafka.Kafka", str(self.folder / "server.properties")]

    def _classpath(self) -> str:
        return jars.classpath(jars.ensure(self.server, self.jar_cache))


def cluster_id_of(folder: Path) -> str:
    """The cluster id kept in ``folder`` (made on first use)."""
    path = folder / "cluster.id"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    folder.mkdir(parents=True, exist_ok=True)
    cluster_id = new_cluster_id()
    path.write_text(cluster_id, encoding="utf-8")
    return cluster_id


def nodes(folder: Path, ports: Sequence[int], controller_ports: Sequence[int], heap: str = "512m",
          scram: Scram | None = None, server: jars.Bundle = jars.KAFKA) -> list[KafkaNode]:
    """The nodes of a cluster on the given client and controller ports, node ids from 1."""
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controller_ports))
    return [KafkaNode(i + 1, folder / f"node-{i + 1}", port, cport, voters, len(ports), heap, scram, server=server)
            for i, (port, cport) in enumerate(zip(ports, controller_ports, strict=True))]


class KafkaCluster:
    """N Kafka nodes on free ports under ``folder``, as child processes (tests and benchmarks)."""

    def __init__(self, folder: Path, size: int = 1, java_home: Path | None = None, heap: str = "512m",
                 scram: Scram | None = None, server: jars.Bundle = jars.KAFKA) -> None:
        ports = free_ports(2 * size)
        self.folder = folder
        self.java = java_binary(java_home)
        self.nodes = nodes(folder, ports[:size], ports[size:], heap, scram, server)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def bootstrap(self) -> str:
        """Every node's client listener."""
        return ",".join(n.bootstrap for n in self.nodes)

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        """Format (first time) and start every node; wait until each listens."""
        cluster_id = cluster_id_of(self.folder)
        for node in self.nodes:
            node.prepare(self.java, cluster_id)
        for node in self.nodes:
            self.start_node(node.node_id, wait=False)
        for node in self.nodes:
            self._wait(node, timeout)
        return self

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def start_node(self, node_id: int, wait: bool = True, timeout: float = 90.0) -> None:
        """Start one node (again), its output appended to ``node-N/kafka.log``."""
        node = self.node(node_id)
        with (node.folder / "kafka.log").open("ab") as out:
            self.procs[node_id] = subprocess.Popen(node.argv(self.java), stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
        if wait:
            self._wait(node, timeout)

    def _wait(self, node: KafkaNode, timeout: float) -> None:
        proc = self.procs[node.node_id]
        if not wait_listening(node.port, timeout) or proc.poll() is not None:
            log = (node.folder / "kafka.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise RuntimeError(f"Kafka node {node.node_id} did not start: {log[-1] if log else 'no output'}")

    def kill(self, node_id: int) -> None:
        """SIGKILL one node."""
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop_node(self, node_id: int, timeout: float = 60.0) -> None:
        """SIGTERM one node (a controlled shutdown), SIGKILL if it hangs."""
        terminate(self.procs.get(node_id), timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node at once (one by one, the last ones would wait for a lost quorum)."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
