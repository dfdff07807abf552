"""Topic plan, broker and Kafka Connect worker configuration, Connect failure summaries (no network)."""

from __future__ import annotations

from pathlib import Path

from streams.capture.connect import root_cause
from streams.local.connect import ConnectWorker
from streams.local.kafka import Scram, nodes
from streams.settings import KafkaSettings, TopicPartitions
from streams.topics import plan


def test_every_kind_of_topic_gets_its_partitions_and_settings() -> None:
    kafka = KafkaSettings(replication_factor=3, min_insync_replicas=2,
                          partitions=TopicPartitions(raw=6, changes=8, commands=3, dlq=2, canonical=5))
    listed = plan(kafka, ["crm.public.accounts", "erp.public.customers", "crm.public.accounts"], ["customer"],
                  ["canonical.customer.v1"], audit_days=30)
    specs = {s.name: s for s in listed}
    assert len(listed) == len(specs) == 11  # a topic named twice is planned once
    assert specs["crm.public.accounts"].partitions == 6
    assert specs["sync.changes.customer"].partitions == 8
    assert specs["sync.commands.crm"].partitions == specs["sync.commands.erp"].partitions == 3
    assert specs["sync.dlq"].partitions == specs["sync.conflicts"].partitions == specs["sync.audit"].partitions == 2
    assert specs["sync.audit"].config["retention.ms"] == str(30 * 24 * 3600 * 1000)  # audit.retention_days
    assert specs["canonical.customer.v1"].config["cleanup.policy"] == "compact"
    assert specs["sync.dlq"].config["retention.ms"] == specs["sync.conflicts"].config["retention.ms"] == "-1"
    assert specs["_crm-erp-sync.capture.crm"].partitions == 1
    assert all(s.config["min.insync.replicas"] == "2" for s in specs.values())
    assert "retention.ms" not in specs["sync.commands.crm"].config


def test_a_three_node_cluster_replicates_its_internal_topics_three_times() -> None:
    three = nodes(Path("/tmp/k"), [1, 2, 3], [4, 5, 6])
    props = three[1].properties()
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:4,2@127.0.0.1:5,3@127.0.0.1:6"
    assert props["offsets.topic.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["auto.create.topics.enable"] == "false"
    assert props["unclean.leader.election.enable"] == "false"
    single = nodes(Path("/tmp/k"), [1], [2])[0].properties()
    assert single["offsets.topic.replication.factor"] == "1" and single["min.insync.replicas"] == "1"


def test_a_secured_node_has_a_sasl_ssl_listener_and_an_authorizer() -> None:
    scram = Scram("admin", "pw", {"sync": "pw2"}, Path("/tls/keystore.pem"), Path("/tls/ca.pem"))
    props = nodes(Path("/tmp/k"), [9092], [9093], scram=scram)[0].properties()
    assert props["listeners"].startswith("SASL_SSL://127.0.0.1:9092,")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.truststore.location"] == "/tls/ca.pem"


def test_the_connect_worker_resolves_placeholders_and_loads_plugins() -> None:
    props = ConnectWorker(Path("/tmp/c"), "k:9092", 18083).properties(Path("/tmp/c/plugins"))
    assert props["config.providers"] == "env,file"
    assert props["config.providers.env.class"].endswith("EnvVarConfigProvider")
    assert props["config.providers.file.class"].endswith("FileConfigProvider")
    assert props["plugin.path"] == "/tmp/c/plugins"
    assert props["connector.client.config.override.policy"] == "All"  # producer.override.* in the connector files
    assert props["listeners"] == "http://127.0.0.1:18083"


def test_a_failed_task_trace_is_summarised_with_its_root_cause() -> None:
    trace = ("org.apache.kafka.connect.errors.DataException: Failed to serialize Avro data from topic crm.public.x :\n"
             "\tat io.confluent.connect.avro.AvroConverter.fromConnectData(AvroConverter.java:93)\n"
             "Caused by: org.apache.kafka.common.errors.SerializationException: Error registering Avro schema\n"
             "\tat x.y(Z.java:1)\n"
             "Caused by: io.confluent.kafka.schemaregistry.client.rest.exceptions.RestClientException: Schema being"
             " registered is incompatible with an earlier schema for subject \"crm.public.x-value\"; error code: 409\n")
    line = root_cause(trace)
    assert line.startswith("org.apache.kafka.connect.errors.DataException: Failed to serialize")
    assert line.endswith('subject "crm.public.x-value"; error code: 409')
    assert "\n" not in line
    assert root_cause(None) == "no trace"


def test_cluster_ids_are_never_read_as_an_option() -> None:
    from streams.local.kafka import new_cluster_id

    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000 and not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def test_a_table_name_kafka_does_not_allow_becomes_debeziums_topic() -> None:
    from streams.topics import raw_topic

    assert raw_topic("erp", "public.tabSales Order Item") == "erp.public.tabSales_Order_Item"
    assert raw_topic("crm", "public.accounts") == "crm.public.accounts"
