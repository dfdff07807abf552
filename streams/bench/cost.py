"""Cost per change, per stage: CPU microseconds and bytes on the wire for each source edit, at a fixed rate.

The steady load (``bench steady``: half CRM e-mails, half ERP credit limits) runs at one rate the
sync keeps up with, on freshly started local services, after ``warmup_s`` of the same load (Kafka's
and Kafka Connect's JIT compilers busy in the first ~2 minutes of a load, as they are only once in a
deployment's life). Around it (load start → the worker idle again) this reads:

- the CPU time (user + system, every thread) from ``/proc/<pid>/stat`` over the load and, before
  it, over 30 s of the idle stack (what each part uses doing nothing: polls, heartbeats, timers),
  of each process — Kafka Connect's JVM (Debezium), the capture process, the worker, each Kafka
  node — and of the sync's
  PostgreSQL backends by role (``pg_stat_activity``: the walsenders decoding for Debezium, the
  appliers, the sync store, the document readers; the load's own backends are not the sync's cost);
  "marginal" is what a part used less what it uses idle over the same time; of a JVM, also what its
  JIT compiler threads used (``/proc/<pid>/task/*/stat``);
- how the worker's CPU divides between its stages: py-spy samples (100/s) the worker's thread that
  holds the GIL, i.e. runs Python, and each sample goes to the stage whose code is on its stack
  (normalize, reconcile, the appliers, documents) or else to the library running (Faust, aiokafka,
  psycopg, the event loop); the worker's CPU not spent holding the GIL is its native threads
  (librdkafka's, libpq's) and system calls (when the cores are saturated, a thread holds the GIL
  while it waits for a core: the split is then scaled down to the CPU the worker used);
- the bytes each topic family grew by in the broker's log segments (the record batches as the
  producers sent them: bytes on the wire for a write; each is read once by the worker);
- the events each stage took (the worker's ``sync_stage_events_total``), per edit.

Divided by the edits committed, these are the figures that say how many cores a change rate needs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from streams.bench.report import write
from streams.bench.steady import _load, aligned_pairs, warm_up, worker_idle
from streams.local.harness import Harness, running, scratch_harness, wait_for
from streams.local.ports import free_port
from streams.local.status import scrape

SAMPLES_PER_S = 100
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
STAGE_FILES = {  # the first of these on a sample's stack names its stage
    "streams/agents/normalize.py": "normalize", "streams/identity/": "normalize", "streams/mapping/": "normalize",
    "streams/queried.py": "normalize",
    "streams/agents/reconcile.py": "reconcile", "streams/reconcile/": "reconcile", "streams/store.py": "reconcile",
    "streams/agents/creates.py": "reconcile",
    "streams/agents/apply.py": "apply", "streams/apply/": "apply",
    "streams/agents/documents.py": "documents", "streams/documents/": "documents",
    "streams/agents/audit.py": "audit trail", "streams/audit.py": "audit trail",
    "streams/agents/health.py": "health and metrics", "streams/metrics.py": "health and metrics",
}
LIBRARIES = (("streams/produce.py", "sends (librdkafka producer)"), ("streams/codecs.py", "codecs"),
             ("faust/", "faust"), ("mode/", "faust"), ("aiokafka/", "aiokafka (fetch, protocol)"),
             ("psycopg/", "psycopg"))
JVMS = ("capture: Kafka Connect", "Kafka node")  # the parts that are JVMs, whose JIT compiler is told apart
NATIVE = "outside the GIL: librdkafka's and libpq's threads, system calls"
APP_FUNCTIONS = {"locked": "reconcile", "send_then_commit": "reconcile"}  # streams/app.py's shared helpers


def _stat(path: Path) -> tuple[str, float] | None:
    """(name, user + system CPU seconds) from a ``/proc`` ``stat`` file (None if the process or thread is gone)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    name, _, rest = text.partition("(")[2].rpartition(")")  # the name may hold ")" or spaces
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, every thread, in seconds (0 if it is gone)."""
    read = _stat(Path(f"/proc/{pid}/stat"))
    return read[1] if read else 0.0


def jit_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """CPU of a JVM's JIT compiler threads (``C1 CompilerThre…``, ``C2 CompilerThre…``), in seconds."""
    reads = (_stat(task) for task in (proc / str(pid) / "task").glob("*/stat"))
    return sum(seconds for name, seconds in filter(None, reads) if "CompilerThre" in name)


def pg_role(backend_type: str, application: str, database: str | None) -> str | None:
    """Which part of the sync a PostgreSQL backend works for (None: not the sync's)."""
    if backend_type == "walsender":
        return "postgresql: logical decoding for Debezium"
    if backend_type != "client backend" or not application:
        return None  # the load's connections (no application name), PostgreSQL's own processes
    if application.startswith("crm-erp-sync apply"):
        return "postgresql: applier writes"
    if application == "crm-erp-sync" and database == "sync":
        return "postgresql: sync store"
    if application.startswith("crm-erp-sync"):
        return "postgresql: document, echo and audit reads"
    return None


def pg_backends(h: Harness) -> dict[int, str]:
    """The sync's PostgreSQL backends now: pid -> role."""
    with h.connect("postgres") as conn:
        rows = conn.execute("SELECT pid, backend_type, application_name, datname FROM pg_stat_activity").fetchall()
    return {pid: role for pid, kind, app, db in rows if (role := pg_role(kind or "", app or "", db))}


def topic_family(topic: str) -> str:
    """The family a topic's bytes are counted under."""
    for prefix, family in (("sync.changes.", "sync.changes.*"), ("sync.commands.", "sync.commands.*"),
                           ("canonical.", "canonical.*"), ("sync.", "sync.* (audit, conflicts, dead letters)"),
                           ("crm.", "raw (Debezium)"), ("erp.", "raw (Debezium)")):
        if topic.startswith(prefix):
            return family
    return "Kafka's and Connect's own (offsets, status)"


def topic_bytes(h: Harness) -> Counter[str]:
    """Bytes in the first Kafka node's log segments, per topic family (the benchmarks run one node)."""
    assert h.kafka is not None
    sizes: Counter[str] = Counter()
    node = h.kafka.nodes[0]
    for folder in (node.folder / "data").iterdir():
        if folder.is_dir() and "-" in folder.name and folder.name[folder.name.rfind("-") + 1:].isdigit():
            topic = folder.name[:folder.name.rfind("-")]
            sizes[topic_family(topic)] += sum(f.stat().st_size for f in folder.glob("*.log"))
    return sizes


def stage_of(stack: list[str]) -> str:
    """The stage a py-spy sample belongs to, from its frames (outermost first: ``Class.func (file:line)``)."""
    for frame in stack:
        where = frame.rsplit("(", 1)[-1]
        for fragment, stage in STAGE_FILES.items():
            if fragment in where:
                return stage
        function = frame.split(" (", 1)[0].rsplit(".", 1)[-1]
        if "streams/app.py" in where and function in APP_FUNCTIONS:
            return APP_FUNCTIONS[function]
    if any("streams/agents/loop.py" in f for f in stack):
        return "faust: taking batches (consumer, dispatch)"
    for frame in reversed(stack):  # no stage's code: the innermost library names it
        where = frame.rsplit("(", 1)[-1]
        for fragment, part in LIBRARIES:
            if where.startswith(fragment):
                return part
    return "asyncio event loop and threads"


def stage_shares(raw: Path) -> Counter[str]:
    """Samples per stage from py-spy's raw output (``frame;frame;... count`` per line)."""
    shares: Counter[str] = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            shares[stage_of(stack.split(";"))] += int(count)
    return shares


def stage_events(port: int) -> Counter[str]:
    """Events into each worker stage so far."""
    events: Counter[str] = Counter()
    for labels, value in (scrape(port) or {}).get("sync_stage_events_total", []):
        if labels.get("io") == "in":
            events[labels.get("stage", "?")] += int(value)
    return events


class Meter:
    """CPU seconds so far of each part: the processes, and the sync's PostgreSQL backends by role."""

    def __init__(self, h: Harness, procs: dict[str, int]) -> None:
        self.h, self.procs = h, procs

    def read(self) -> tuple[dict[str, float], dict[int, tuple[str, float]]]:
        """(part -> CPU seconds, backend pid -> (role, CPU seconds))."""
        return ({name: cpu_seconds(pid) for name, pid in self.procs.items()},
                {pid: (role, cpu_seconds(pid)) for pid, role in pg_backends(self.h).items()})

    @staticmethod
    def used(before: tuple[dict[str, float], dict[int, tuple[str, float]]],
             after: tuple[dict[str, float], dict[int, tuple[str, float]]]) -> dict[str, float]:
        """CPU seconds each part used between two reads (a backend new since ``before`` counts from its start)."""
        used = {name: after[0][name] - before[0][name] for name in after[0]}
        for pid, (role, seconds) in after[1].items():
            used[role] = used.get(role, 0.0) + seconds - before[1].get(pid, (role, 0.0))[1]
        return used


def run(rate: float = 200.0, seconds: float = 60.0, out: Path | None = None, progress: bool = True,
        idle_s: float = 30.0, warmup_s: float = 0.0) -> dict[str, Any]:
    """After ``warmup_s`` of the load (not measured), the idle stack for ``idle_s``, then one fixed-rate step."""
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when run as .venv/bin/crm-erp-sync
    spy = str(beside) if beside.is_file() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: it is a dev dependency (./run.sh installs it)")
    with scratch_harness("bench", seed_accounts=300) as h:
        port = free_port()
        h.write_config(processors={"metrics_port": port})
        capture, worker = h.spawn("capture"), h.spawn("worker", log_name="worker.log")
        with running(capture), running(worker):
            pairs = aligned_pairs(h, port, progress)
            warm_up(h, pairs, [port], rate, warmup_s, progress)
            assert h.kafka is not None and h.connect_proc is not None
            procs = {"capture: Kafka Connect (Debezium)": h.connect_proc.pid,
                     "capture: the capture process": capture.pid, "worker": worker.pid}
            meter = Meter(h, procs | {f"Kafka node {n}": p.pid for n, p in h.kafka.procs.items()})
            if progress:
                print(f"  idle for {idle_s:g} s ...", flush=True)
            idle_from = meter.read()
            time.sleep(idle_s)  # the measurement itself: what the stack uses doing nothing
            idle = {name: used / idle_s for name, used in Meter.used(idle_from, meter.read()).items()}
            jvms = {name: pid for name, pid in meter.procs.items() if name.startswith(JVMS)}
            jit_before = {name: jit_seconds(pid) for name, pid in jvms.items()}
            before, bytes_before, events_before = meter.read(), topic_bytes(h), stage_events(port)
            raw = h.root / "worker.pyspy"
            profiler = subprocess.Popen([spy, "record", "--pid", str(worker.pid), "--format", "raw", "--gil",
                                         "--rate", str(SAMPLES_PER_S), "--nonblocking", "--output", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if progress:
                print(f"  {rate:g} edits/s for {seconds:g} s, measuring ...", flush=True)
            started = time.monotonic()
            expected, achieved = _load(h, pairs, rate, seconds, "cost", progress)
            wait_for(lambda: worker_idle(port), 600, 1.0, "the worker to finish the load")
            window = time.monotonic() - started
            cpu = Meter.used(before, meter.read())
            jit = {name: jit_seconds(pid) - jit_before[name] for name, pid in jvms.items()}
            grew, events = topic_bytes(h) - bytes_before, stage_events(port) - events_before
            profiler.send_signal(2)  # SIGINT: py-spy writes what it sampled and ends
            _, spy_said = profiler.communicate(timeout=60)
            shares = stage_shares(raw) if raw.is_file() else Counter()  # read before the harness's folder goes
            if out is not None and raw.is_file():  # the samples themselves, for a closer look (flamegraph.pl)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(raw, out.with_suffix(".pyspy.txt"))
    edits = len(expected)
    sampled = sum(shares.values())
    if not sampled:
        print(f"  py-spy sampled nothing (status {profiler.returncode}): {spy_said.strip()[-500:]}", flush=True)
    held = sampled / SAMPLES_PER_S  # seconds the GIL was held; more than the CPU used when the cores are
    scale = min(1.0, cpu["worker"] / held) if held else 0.0  # saturated (a holder waits for a core)
    stages = {stage: n / SAMPLES_PER_S * scale for stage, n in shares.most_common()}
    stages[NATIVE] = max(0.0, cpu["worker"] - held)
    gross = {name: round(used * 1e6 / edits) for name, used in cpu.items()}
    marginal = {name: round((used - idle.get(name, 0.0) * window) * 1e6 / edits) for name, used in cpu.items()}
    return write({
        "benchmark": "cost-per-change", "rate_per_s": rate, "achieved_rate_per_s": round(achieved, 1),
        "warmup_s": warmup_s, "edits": edits, "window_s": round(window, 1),
        "cpu_us_per_edit": dict(sorted(gross.items(), key=lambda kv: -kv[1])),
        "cpu_us_per_edit_total": sum(gross.values()),
        "idle_cpu_percent_of_a_core": {name: round(v * 100, 1) for name, v in idle.items()},
        "marginal_cpu_us_per_edit": dict(sorted(marginal.items(), key=lambda kv: -kv[1])),
        "marginal_cpu_us_per_edit_total": sum(marginal.values()),
        "jit_cpu_us_per_edit": {name: round(used * 1e6 / edits) for name, used in jit.items()},
        "worker_cpu_us_per_edit_by_stage": {s: round(v * 1e6 / edits) for s, v in stages.items()},
        "worker_samples": sampled,
        "bytes_per_edit_by_topic": {f: round(b / edits) for f, b in grew.most_common()},
        "bytes_per_edit_total": round(sum(grew.values()) / edits),
        "events_per_edit_by_stage": {s: round(n / edits, 2) for s, n in events.most_common()},
    }, out)


def format_result(result: dict[str, Any]) -> str:
    """The tables."""
    lines = [f"cost per edit at {result['rate_per_s']:g} edits/s ({result['edits']} edits, half CRM, half ERP;"
             f" window {result['window_s']} s, until the worker was idle again;"
             f" after {result.get('warmup_s', 0):g} s of warm-up):",
             "  CPU, microseconds per edit: all used in the window / less what the part uses idle"
             " (idle: % of a core)"]
    idle, jit = result["idle_cpu_percent_of_a_core"], result.get("jit_cpu_us_per_edit", {})
    lines += [f"    {us:>7} / {result['marginal_cpu_us_per_edit'][name]:>7}  {name} (idle {idle.get(name, 0)} %"
              + (f"; its JIT compiler {jit[name]} per edit)" if name in jit else ")")
              for name, us in result["cpu_us_per_edit"].items()]
    lines.append(f"    {result['cpu_us_per_edit_total']:>7} / {result['marginal_cpu_us_per_edit_total']:>7}  total")
    lines.append(f"  the worker's CPU by stage ({result['worker_samples']} py-spy samples of the thread holding"
                 " the GIL), microseconds per edit:")
    lines += [f"    {us:>7}  {name}" for name, us in result["worker_cpu_us_per_edit_by_stage"].items()]
    lines.append("  bytes written to the broker per edit:")
    lines += [f"    {b:>7}  {name}" for name, b in result["bytes_per_edit_by_topic"].items()]
    lines.append(f"    {result['bytes_per_edit_total']:>7}  total")
    lines.append("  events per edit into each worker stage: " + ", ".join(
        f"{s} {n}" for s, n in result["events_per_edit_by_stage"].items()))
    return "\n".join(lines)
