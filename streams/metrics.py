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
CAPTURE_LAG = Histogram(
    "sync_capture_lag_seconds",
    "Source commit -> the event acknowledged by the broker (the last data event of each batch).",
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
CAPTURE_SLOT_WAL = Gauge(
    "sync_capture_slot_retained_wal_bytes",
    "WAL the source database keeps for this source's replication slot (current LSN - confirmed flush LSN).",
    ["source"],
)
CONNECT_TASKS = Gauge(
    "sync_connect_tasks",
    "Tasks of a source's Kafka Connect connector per state (RUNNING, FAILED, PAUSED, UNASSIGNED, RESTARTING).",
    ["source", "state"],
)
CONNECT_CONNECTOR_RUNNING = Gauge(
    "sync_connect_connector_running", "1 when the source's Kafka Connect connector runs, else 0.", ["source"]
)
CONNECT_RESTARTS = Counter(
    "sync_connect_restarts_total", "Failed connectors or tasks capture asked Kafka Connect to restart.", ["source"]
)
REGISTRY_REQUESTS = Counter(
    "sync_registry_requests_total", "Schema registry HTTP requests.", ["method", "status"]
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics on ``host:port`` (port 0 = do not serve)."""
    if port:
        start_http_server(port, addr=host)

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
DEAD_LETTERS = Counter("sync_dead_letters_total", "Events sent to the dead-letter topic.", ["stage", "reason"])
APPLY = Counter(
    "sync_apply_commands_total", "Commands an applier handled, by outcome (written, skipped, replayed, failed).",
    ["system", "outcome"],
)
END_TO_END = Histogram(
    "sync_end_to_end_seconds", "Source commit -> the resulting write committed on the other system.",
    ["flow", "direction"], buckets=LAG_BUCKETS,
)
RETRIES = Counter("sync_retries_total", "Transient failures retried with backoff.", ["stage"])
AUDIT_ENTRIES = Counter(
    "sync_audit_entries_total", "Writes of the sync recorded in the audit trail (sync store and topic sync.audit).",
    ["system", "kind"],
)
DRIFT_RECORDS = Gauge(
    "sync_drift_records", "Records per side and category found by the last run of the continuous compare.",
    ["entity", "system", "category"],
)
DRIFT_PERSISTING = Gauge(
    "sync_drift_persisting_records",
    "Drifted fields and unknown rows that the last two runs of the continuous compare both found.", ["entity"],
)
DRIFT_LAST_RUN = Gauge(
    "sync_drift_last_run_timestamp_seconds", "When the continuous compare last finished for the entity.", ["entity"],
)
IDENTITY_CREATES_DUE = Counter(
    "sync_identity_creates_due_total",
    "Records still without a counterpart after the hold, sent to reconcile to be created on the other system.",
)
STAGE_PROGRESS = Gauge(
    "sync_stage_last_progress_timestamp_seconds",
    "Unix time a stage last finished a batch, or last found nothing to do (no lag): old while lag grows = stalled.",
    ["stage"],
)
STAGE_EVENTS = Counter(
    "sync_stage_events_total", "Events into and out of each processing stage.", ["stage", "io"]
)
STAGE_SECONDS = Histogram(
    "sync_stage_seconds", "Processing time of one batch of events, per stage.", ["stage"],
    buckets=LAG_BUCKETS,
)
SOURCE_TO_PROCESSOR = Histogram(
    "sync_source_to_processor_seconds",
    "Source commit -> the change read by normalize (capture, broker and consumer lag together).",
    ["source"], buckets=LAG_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "sync_consumer_lag_messages",
    "Messages in a partition after the group's committed offset (the worker's assigned partitions).",
    ["group", "topic", "partition"],
)
IDENTITY = Counter("sync_identity_outcomes_total", "Identity decisions, by how the record was linked.",
                   ["entity", "kind"])
CONFLICTS_OPEN = Gauge("sync_conflicts_open", "Manual conflicts waiting for a person.", ["entity"])
CONFLICT_OLDEST_OPEN = Gauge(
    "sync_conflict_oldest_open_age_seconds", "Age of the oldest manual conflict waiting (0 when none).", ["entity"]
)
APPLY_ERRORS = Counter("sync_apply_errors_total", "Commands a target rejected, by error kind.", ["system", "kind"])
DOCUMENTS = Counter("sync_documents_total", "Documents the document rules handled, by rule and outcome.",
                    ["rule", "outcome"])
DOCUMENTS_WAITING = Gauge("sync_documents_waiting", "Created documents waiting (pending) or diverged, by rule.",
                          ["rule", "state"])
STAGES = ("normalize", "reconcile", "apply-crm", "apply-erp")
APPLY_ERROR_KINDS = ("DataError", "IntegrityError", "ProgrammingError")
DEAD_LETTER_REASONS = {"decode": "undecodable", "map": "invalid_value", "reconcile": "invalid_change",
                       "document": "invalid_document",
                       "apply-crm": "rejected_by_target", "apply-erp": "rejected_by_target"}


def init_processor_series(entity: str) -> None:
    """Create the worker's counters at zero, so dashboards and alerts see them before the first event."""
    for stage in STAGES:
        for io in ("in", "out"):
            STAGE_EVENTS.labels(stage, io)
    for stage, reason in DEAD_LETTER_REASONS.items():
        DEAD_LETTERS.labels(stage, reason)
    for what in ("identity", "reconcile", "apply"):
        RETRIES.labels(what)
    for system in ("crm", "erp"):
        for kind in (*APPLY_ERROR_KINDS, "invalid"):
            APPLY_ERRORS.labels(system, kind)
        APPLY.labels(system, "written")
        APPLY.labels(system, "skipped")
        ECHOES.labels(entity, system)
        COMMANDS.labels(entity, system)
    for kind in ("exact", "name", "fuzzy", "review", "created", "single"):
        IDENTITY.labels(entity, kind)
    CONFLICTS_OPEN.labels(entity).set(0)
    CONFLICT_OLDEST_OPEN.labels(entity).set(0)
