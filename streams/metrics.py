"""Every Prometheus metric of the project, declared once. Labels are bounded (no entity keys)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CAPTURE_EVENTS = Counter(
    "sync_capture_events_total",
    "Change events captured by Debezium and acknowledged by the broker.",
    ["source", "topic"],
)
CAPTURE_BATCHES = Counter(
    "sync_capture_batches_total", "Debezium batches written to the broker.", ["source"]
)
CAPTURE_BATCH_SECONDS = Histogram(
    "sync_capture_batch_seconds",
    "Time from receiving a Debezium batch to every event of it acknowledged by the broker.",
    ["source"],
    buckets=LAG_BUCKETS,
)
CAPTURE_LAST_EVENT = Gauge(
    "sync_capture_last_event_timestamp_seconds",
    "Unix time of the last acknowledged change event (heartbeats excluded).",
    ["source"],
)
CAPTURE_LAST_HEARTBEAT = Gauge(
    "sync_capture_last_heartbeat_timestamp_seconds",
    "Unix time of the last acknowledged Debezium heartbeat.",
    ["source"],
)
CAPTURE_PRODUCE_ERRORS = Counter(
    "sync_capture_produce_errors_total", "Broker delivery failures (the batch is retried).", ["source"]
)
REGISTRY_REQUESTS = Counter(
    "sync_registry_requests_total", "Schema registry HTTP requests.", ["method", "status"]
)


def serve(port: int) -> None:
    """Expose this process's metrics on ``port`` (0 = do not serve)."""
    if port:
        start_http_server(port, addr="127.0.0.1")

# -- processors ---------------------------------------------------------------------------------
RECONCILE_EVENTS = Counter(
    "sync_reconcile_events_total", "Raw change events the reconcile stage finished.", ["entity", "system", "outcome"]
)
COMMANDS = Counter("sync_commands_total", "Commands sent to a system.", ["entity", "system"])
ECHOES = Counter("sync_echoes_suppressed_total", "Changes recognised as the echo of the sync's own write.",
                 ["entity", "system"])
CONFLICTS = Counter(
    "sync_conflicts_total", "Conflicts detected.", ["entity", "field", "kind", "policy", "resolution"]
)
DEAD_LETTERS = Counter("sync_dead_letters_total", "Events sent to the dead-letter topic.", ["stage"])
APPLY = Counter(
    "sync_apply_commands_total", "Commands an applier handled, by outcome (written, skipped, replayed, failed).",
    ["system", "outcome"],
)
APPLY_BATCH_SECONDS = Histogram(
    "sync_apply_batch_seconds", "Time to apply one batch in one target transaction.", ["system"], buckets=LAG_BUCKETS
)
END_TO_END = Histogram(
    "sync_end_to_end_seconds", "Source commit -> the resulting write committed on the other system.",
    ["flow", "direction"], buckets=LAG_BUCKETS,
)
RETRIES = Counter("sync_retries_total", "Transient failures retried with backoff.", ["stage"])
