"""One frozen settings object, read from ``sync.yaml`` with env overrides.

Every value can be overridden by ``CRM_ERP_SYNC__SECTION__KEY`` (for example
``CRM_ERP_SYNC__KAFKA__BOOTSTRAP_SERVERS``). Secrets are ``SecretStr`` and are masked in
every dump. Build it once with :func:`load_settings` and pass it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streams import resources
from streams.errors import ConfigError

ENV_PREFIX = "CRM_ERP_SYNC__"
ERPNEXT_PROFILES = {"profiles": [Path("schemas/mappings/erpnext/customers.yaml"),
                                 Path("schemas/mappings/erpnext/products.yaml")],
                    "documents": [Path("schemas/mappings/erpnext/orders.yaml")]}
CONFIG_ENV = "CRM_ERP_SYNC_CONFIG"
DEFAULT_CONFIG = "sync.yaml"
LOCAL_PASSWORD_FILE = "secrets/db-password"  # relative to local.state_dir

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(BaseModel):
    """Where one PostgreSQL database is and how to log in."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: int = Field(55432, ge=1, le=65535)
    dbname: str
    user: str = "sync"
    password: SecretStr | None = None
    password_file: Path | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    statement_timeout_s: int = Field(60, ge=1)  # a query (or a row lock) taking longer fails and is retried
    lock_timeout_s: int = Field(30, ge=1)

    def resolved_password(self) -> str | None:
        """The password from ``password`` or, failing that, from ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read password_file {self.password_file} for database {self.dbname}: "
                    f"{exc.strerror}",
                    hint="set the password or point password_file at a readable file",
                ) from exc
        return None

    def conninfo(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        info: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": 10,
            "application_name": "crm-erp-sync",
            # A server that restarted or vanished is noticed within ~25 s, not after TCP's hours.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "options": f"-c statement_timeout={self.statement_timeout_s * 1000}"
                       f" -c lock_timeout={self.lock_timeout_s * 1000}",
        }
        password = self.resolved_password()
        if password:
            info["password"] = password
        return info

    def where(self) -> str:
        """``user@host:port/dbname`` for messages (no password)."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


class TopicPartitions(BaseModel):
    """Partitions of the topics the sync creates, per kind (set before the first start).

    A topic's partitions bound how many workers share it: each partition is read by one worker.
    """

    model_config = _FROZEN

    raw: int = Field(4, ge=1, le=1024)  # Debezium's topics of the mapped and watched tables
    changes: int = Field(4, ge=1, le=1024)  # sync.changes.<entity>, keyed by global id
    commands: int = Field(4, ge=1, le=1024)  # sync.commands.crm / .erp
    dlq: int = Field(1, ge=1, le=1024)  # sync.dlq, sync.conflicts and sync.audit
    canonical: int = Field(4, ge=1, le=1024)  # canonical.<entity>.v1, for downstream consumers


class KafkaSettings(BaseModel):
    """The Kafka broker (cluster)."""

    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    replication_factor: int = Field(1, ge=1)  # of every topic the sync creates (3 in production)
    min_insync_replicas: int = Field(1, ge=1)  # of every topic the sync creates (2 in production)
    partitions: TopicPartitions = TopicPartitions()

    def client_config(self) -> dict[str, Any]:
        """Librdkafka properties shared by every producer, consumer and admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        return conf


class RegistrySettings(BaseModel):
    """The Confluent-API schema registry (embedded or a real one)."""

    model_config = _FROZEN

    url: str = "http://127.0.0.1:18081"
    basic_auth_user_info: SecretStr | None = None
    default_compatibility: Literal[
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    ] = "BACKWARD"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def client_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's ``SchemaRegistryClient``."""
        conf: dict[str, Any] = {"url": self.url, "timeout": 10, "max.retries": 2}
        if self.basic_auth_user_info is not None:
            conf["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        return conf


class CaptureSettings(BaseModel):
    """Debezium capture: the embedded engine, or the connectors of a Kafka Connect cluster."""

    model_config = _FROZEN

    # connect: the connector files are PUT to Kafka Connect (connect_url), which runs Debezium;
    # embedded: Debezium's embedded engine runs inside the capture process.
    mode: Literal["connect", "embedded"] = "connect"
    connect_url: str = "http://127.0.0.1:18083"
    sources: tuple[Literal["crm", "erp"], ...] = ("crm", "erp")
    connectors_dir: Path = Path("connectors")
    java_home: Path | None = None
    jvm_max_heap: str = Field("768m", pattern=r"^\d+[mMgG]$")
    jvm_options: tuple[str, ...] = ()
    offset_flush_interval_ms: int = Field(1000, ge=100)
    metrics_port: int = Field(0, ge=0, le=65535)

    @field_validator("connect_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class ProcessorSettings(BaseModel):
    """The Faust workers."""

    model_config = _FROZEN

    # The mapping profiles, one flow each (a single path is a list of one).
    profiles: list[Path] = [Path("schemas/mappings/demo.yaml"), Path("schemas/mappings/demo-products.yaml")]
    # Document profiles (orders and their lines, rollups, canonical documents); [] turns them off.
    documents: list[Path] = [Path("schemas/mappings/demo-orders.yaml")]
    app_id: str = Field("crm-erp-sync", pattern=r"^[\w.-]+$")  # the consumer group; a new one replays
    metrics_port: int = Field(0, ge=0, le=65535)
    session_timeout_s: float = Field(10.0, gt=1)
    rebalance_timeout_s: float = Field(20.0, gt=1)
    fetch_max_wait_ms: int = Field(50, ge=1, le=5000)  # longest a fetch waits for data: latency per topic hop
    # Entity states a worker keeps in memory (checked against the store's version on every read).
    state_cache: int = Field(5_000, ge=0)
    # A batch that cannot be done for this long (a database, the broker or the registry away) ends the
    # worker, unacknowledged, so its supervisor restarts it; `status` and an alert show it meanwhile.
    stall_exit_s: float = Field(120.0, ge=5)
    # Longest the broker may take to acknowledge what a batch sends (then the batch is retried).
    send_timeout_s: float = Field(30.0, ge=1)
    # A record without a counterpart is created on the other system only after this long, so that a
    # twin written on the other system at the same time links to it instead of being created twice.
    create_hold_s: float = Field(3.0, ge=0)

    @field_validator("profiles", "documents", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value


class SyncSettings(BaseModel):
    """How the sync runs as a whole."""

    model_config = _FROZEN

    # Run everything but write nothing: commands are recorded as the plan (`crm-erp-sync plan`), in a
    # consumer group and state of their own, so the first real run afterwards starts from the beginning.
    dry_run: bool = False


class AuditSettings(BaseModel):
    """The audit trail of the sync's writes (``crm-erp-sync audit``; topic ``sync.audit``)."""

    model_config = _FROZEN

    # How long entries stay in the sync store and on the topic (auditors often ask for a year or more).
    retention_days: int = Field(400, ge=1, le=36500)


class CompareSettings(BaseModel):
    """Continuous mode of ``compare``: a worker reconciles both databases on a schedule (metrics and an alert)."""

    model_config = _FROZEN

    # Seconds between two runs; 0 turns continuous mode off. Several workers: one runs it at a time.
    interval_s: float = Field(0.0, ge=0)
    chunk: int = Field(1000, ge=10, le=100_000)  # rows read per read-only snapshot
    pause_s: float = Field(0.2, ge=0, le=60)  # between chunks, so production does not feel it

    @field_validator("interval_s")
    @classmethod
    def _not_too_often(cls, value: float) -> float:
        if 0 < value < 10:
            raise ValueError("must be 0 (off) or at least 10 seconds")
        return value


class LocalSettings(BaseModel):
    """The embedded stack started by ``crm-erp-sync up``."""

    model_config = _FROZEN

    enabled: bool = True
    state_dir: Path = Path(".state")
    postgres_port: int = Field(55432, ge=1, le=65535)
    broker_port: int = Field(19092, ge=1, le=65535)
    controller_port: int = Field(19093, ge=1, le=65535)  # the embedded Kafka's KRaft controller
    broker_heap: str = Field("512m", pattern=r"^\d+[mMgG]$")
    registry_port: int = Field(18081, ge=1, le=65535)
    connect_port: int = Field(18083, ge=1, le=65535)  # the embedded Kafka Connect worker (capture.mode connect)
    connect_heap: str = Field("768m", pattern=r"^\d+[mMgG]$")
    jar_cache: Path = Path.home() / ".cache" / "crm-erp-sync" / "jars"  # Kafka and Debezium jars, fetched once
    pg_bin_dir: Path | None = None
    seed: bool = True
    seed_accounts: int = Field(300, ge=0)
    # Which demo ERP the embedded stack installs: the first (demo) or the ERPNext-like one (erpnext),
    # with its profiles (schemas/mappings/erpnext/) unless processors.profiles/documents are set.
    erp_demo: Literal["demo", "erpnext"] = "demo"
    prometheus: bool = True  # run a Prometheus server (Debian package `prometheus`) scraping every part
    prometheus_port: int = Field(19090, ge=1, le=65535)
    capture_metrics_port: int = Field(19101, ge=1, le=65535)  # capture.metrics_port unless set
    worker_metrics_port: int = Field(19102, ge=1, le=65535)  # processors.metrics_port unless set

    @field_validator("state_dir", "jar_cache")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()


class Settings(BaseSettings):
    """Everything configurable, frozen once built."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    crm: DatabaseSettings = DatabaseSettings(dbname="crm")
    erp: DatabaseSettings = DatabaseSettings(dbname="erp")
    store: DatabaseSettings = DatabaseSettings(dbname="sync")
    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    capture: CaptureSettings = CaptureSettings()
    processors: ProcessorSettings = ProcessorSettings()
    sync: SyncSettings = SyncSettings()
    audit: AuditSettings = AuditSettings()
    compare: CompareSettings = CompareSettings()
    local: LocalSettings = LocalSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_host: str = "127.0.0.1"  # where capture and workers serve /metrics (0.0.0.0 for a remote Prometheus)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Env beats the YAML file (passed as init values) beats the defaults."""
        return (env_settings, init_settings)

    def database(self, name: str) -> DatabaseSettings:
        """The settings of database ``crm``, ``erp`` or ``store``."""
        db: DatabaseSettings = getattr(self, name)
        return db

    def masked(self) -> dict[str, Any]:
        """A JSON-able dump with every secret replaced by ``********``."""
        return _mask(self.model_dump(mode="json"), self)


def _mask(dump: dict[str, Any], settings: Settings) -> dict[str, Any]:
    for section in ("crm", "erp", "store"):
        if dump[section]["password"] is not None:
            dump[section]["password"] = "********"
    if dump["kafka"]["sasl_password"] is not None:
        dump["kafka"]["sasl_password"] = "********"
    if dump["registry"]["basic_auth_user_info"] is not None:
        dump["registry"]["basic_auth_user_info"] = "********"
    return dump


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (crm, erp, kafka, ...)")
    return data


def _resolve(settings: Settings, base: Path) -> Settings:
    """Make relative paths absolute against the config file's folder; fill in local-mode addresses.

    With ``local.enabled`` the embedded services listen on the ``local.*`` ports, so every address
    the user did not set explicitly points at them.
    """

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    def shipped(section: BaseModel, key: str) -> Any:
        """A path setting: the user's against the config's folder; the default one from the installed files."""
        value = getattr(section, key)
        if key in section.model_fields_set:
            return [absolute(p) for p in value] if isinstance(value, list) else absolute(value)
        return [resources.root() / p for p in value] if isinstance(value, list) else resources.root() / value

    state_dir = settings.local.state_dir
    if settings.local.erp_demo != "demo" and "state_dir" not in settings.local.model_fields_set:
        state_dir = Path(f".state-{settings.local.erp_demo}")  # never the other demo's databases
    local = settings.local.model_copy(update={"state_dir": absolute(state_dir)})
    capture_update: dict[str, Any] = {"connectors_dir": shipped(settings.capture, "connectors_dir")}
    processors_update: dict[str, Any] = {"profiles": shipped(settings.processors, "profiles"),
                                         "documents": shipped(settings.processors, "documents")}
    for key in ("profiles", "documents") if settings.local.erp_demo == "erpnext" else ():
        if key not in settings.processors.model_fields_set:
            processors_update[key] = [resources.root() / p for p in ERPNEXT_PROFILES[key]]
    if local.enabled and "metrics_port" not in settings.capture.model_fields_set:
        capture_update["metrics_port"] = local.capture_metrics_port
    if local.enabled and "metrics_port" not in settings.processors.model_fields_set:
        processors_update["metrics_port"] = local.worker_metrics_port
    capture = settings.capture.model_copy(update=capture_update)
    processors = settings.processors.model_copy(update=processors_update)
    update: dict[str, Any] = {"local": local, "capture": capture, "processors": processors}
    for name in ("crm", "erp", "store"):
        db = settings.database(name)
        changes: dict[str, Any] = {}
        if db.password_file is not None:
            changes["password_file"] = absolute(db.password_file)
        elif db.password is None and local.enabled:
            # The embedded stack generates this file at first start.
            changes["password_file"] = local.state_dir / LOCAL_PASSWORD_FILE
        if local.enabled and "port" not in db.model_fields_set:
            changes["port"] = local.postgres_port
        update[name] = db.model_copy(update=changes)
    if local.enabled and "bootstrap_servers" not in settings.kafka.model_fields_set:
        update["kafka"] = settings.kafka.model_copy(
            update={"bootstrap_servers": f"127.0.0.1:{local.broker_port}"}
        )
    if local.enabled and "connect_url" not in settings.capture.model_fields_set:
        update["capture"] = capture.model_copy(update={"connect_url": f"http://127.0.0.1:{local.connect_port}"})
    if local.enabled and "url" not in settings.registry.model_fields_set:
        update["registry"] = settings.registry.model_copy(update={"url": f"http://127.0.0.1:{local.registry_port}"})
    return settings.model_copy(update=update)


# Addresses a deployment must name when local.enabled is false: (section, key, what it is).
ADDRESSES = (("crm", "host", "the CRM database"), ("erp", "host", "the ERP database"),
             ("store", "host", "the sync store database"), ("kafka", "bootstrap_servers", "the Kafka cluster"),
             ("registry", "url", "the schema registry"))


def _check_production(settings: Settings, source: str) -> None:
    """Without the embedded stack, an address left at its default is an error (it would be 127.0.0.1)."""
    if settings.local.enabled:
        return
    for section, key, what in ADDRESSES:  # capture.connect_url: only `capture` and `status` use it, and say so
        if key not in getattr(settings, section).model_fields_set:
            raise ConfigError(
                f"local.enabled is false but {section}.{key} ({what}) is not set in {source}",
                hint=f"set {section}.{key} in {source} or env {_env_name((section, key))}"
                     " (or local.enabled: true for the embedded demo stack)")


def production_warnings(settings: Settings) -> list[str]:
    """What works but is unsafe in production: one line each, with the fix."""
    if settings.local.enabled:
        return []
    out = []
    if settings.kafka.replication_factor < 3 or settings.kafka.min_insync_replicas < 2:
        out.append(f"kafka.replication_factor {settings.kafka.replication_factor} / kafka.min_insync_replicas"
                   f" {settings.kafka.min_insync_replicas}: a broker loss can lose or stop the sync's topics"
                   " (set 3 / 2)")
    return out


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read ``sync.yaml`` (or ``config``), apply env overrides, validate, freeze.

    Raises :class:`ConfigError` naming the key, the env var and the fix.
    """
    if config is None and os.environ.get(CONFIG_ENV):
        config = Path(os.environ[CONFIG_ENV])
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = Path(DEFAULT_CONFIG)
    data: dict[str, Any] = {}
    if config is not None:
        data = _read_yaml(config)
    data.update(overrides)
    source = str(config) if config is not None else "sync.yaml"
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        key = ".".join(str(part) for part in loc)
        got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
        raise ConfigError(
            f"invalid setting {key} in {source}: {first['msg']}{got}",
            hint=f"fix {key} in {source} or set env {_env_name(loc)}",
        ) from exc
    _check_production(settings, source)
    base = config.resolve().parent if config is not None else Path.cwd()
    return _resolve(settings, base)
