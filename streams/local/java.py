"""Finding the Java runtime that runs Kafka, Kafka Connect and the Debezium engine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from streams.errors import PreflightError

JAVA_HINT = "install Java 17+ (apt-get install openjdk-17-jre-headless) or set capture.java_home / JAVA_HOME"


def find_java_home(configured: Path | None) -> Path:
    """The Java home (with ``lib/server/libjvm.so``) to use; Java 17 or newer."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured)
    elif os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    else:
        java = shutil.which("java")
        if java:
            candidates.append(Path(java).resolve().parent.parent)
    for home in candidates:
        if (home / "lib" / "server" / "libjvm.so").is_file():
            release = home / "release"
            if release.is_file():
                for line in release.read_text(encoding="utf-8", errors="replace").splitlines():
                    if line.startswith("JAVA_VERSION="):
                        major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                        if major < 17:
                            raise PreflightError(f"Java {major} at {home} is too old for Kafka 4 and Debezium 3",
                                                 hint=JAVA_HINT)
            return home
    where = ", ".join(str(c) for c in candidates) or "PATH"
    raise PreflightError(f"Java not found (looked in {where}); Kafka and Debezium run in a JVM", hint=JAVA_HINT)


def log4j2_properties(info_loggers: dict[str, str]) -> str:
    """A log4j2 configuration: warnings and errors to stdout, plus INFO of the named loggers (id -> name)."""
    lines = ["status = error", "appender.out.type = Console", "appender.out.name = out",
             "appender.out.layout.type = PatternLayout", "appender.out.layout.pattern = [%d] %p %m (%c{1})%n",
             "rootLogger.level = WARN", "rootLogger.appenderRef.out.ref = out"]
    for key, name in info_loggers.items():
        lines += [f"logger.{key}.name = {name}", f"logger.{key}.level = INFO"]
    return "\n".join(lines) + "\n"


def java_binary(configured: Path | None) -> str:
    """The ``java`` executable of :func:`find_java_home`."""
    return str(find_java_home(configured) / "bin" / "java")
