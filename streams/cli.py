"""``crm-erp-sync``: one console script, subcommands. Errors are one line plus a hint."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.errors import ConfigError, SyncError
from streams.settings import CONFIG_ENV, ENV_PREFIX, Settings, load_settings

log = logging.getLogger("crm-erp-sync")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Start the embedded stack and supervise it."""
    from streams.local.stack import up

    return up(settings, args.config)


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    """Stop a running ``up``."""
    from streams.local.stack import down

    return down(settings)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Print the health of each part."""
    from streams.local.status import format_status, status, status_json

    info = status(settings)
    print(status_json(info) if args.json else format_status(info))
    return 0


def cmd_capture(settings: Settings, args: argparse.Namespace) -> int:
    """Run capture in the foreground: deploy to Kafka Connect and watch, or run the embedded engine."""
    from streams import metrics

    runner: Any
    if settings.capture.mode == "connect":
        from streams.capture.connect import ConnectCapture

        runner = ConnectCapture(settings, args.source or None)
    else:
        from streams.capture.runner import CaptureRunner

        runner = CaptureRunner(settings, args.source or None)

    def on_signal(signum: int, _frame: Any) -> None:
        runner.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    metrics.serve(settings.capture.metrics_port, settings.metrics_host)
    code: int = runner.run()
    for error in runner.errors:
        print(f"crm-erp-sync capture: error: {error}", file=sys.stderr)
    return code


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run the Faust processors (several workers may share the load)."""
    import gc

    import faust

    from streams import memory
    from streams.app import Processors
    from streams.documents.spec import load_documents
    from streams.identity.bootstrap import bootstrap
    from streams.mapping.profile import load_profiles
    from streams.topics import ensure_planned

    memory.map_large_blocks()
    profiles = load_profiles(settings.processors.profiles)
    documents = load_documents(settings.processors.documents)
    ensure_planned(settings)
    processors = Processors(settings, profiles, documents)
    from streams import metrics

    metrics.serve(settings.processors.metrics_port, settings.metrics_host)
    for profile in profiles:
        counts = bootstrap(profile, settings, processors.store)
        for kind, n in counts.items():
            metrics.IDENTITY.labels(profile.entity, "single" if kind == "none" else kind).inc(n)
        log.info("identity of %s: %s", profile.entity, dict(counts))
    # Each change allocates many small objects (decoded rows, records, states); with Python's default
    # thresholds the cyclic collector ran after every 700 and often rescanned all the worker set up.
    # What exists now is frozen out of its scans, and it runs ~30x less often (drain +10-15 %, README).
    gc.collect()  # nothing the bootstrap left in cycles is frozen below
    memory.give_back()  # what the bootstrap freed (an initial sync's 100,000 records: ~50 MiB)
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    worker = faust.Worker(processors.app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0


def _store(settings: Settings) -> Any:
    from streams.store import Store

    try:
        store = Store(settings.store.conninfo())
    except Exception as exc:  # psycopg's errors: one line, not a traceback
        raise SyncError(f"cannot open the sync store {settings.store.where()}: {str(exc).strip().splitlines()[0]}",
                        hint="start the stack (crm-erp-sync up) or fix the store section") from exc
    store.migrate()
    return store


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    def cell(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (dict, list)) else str(v)
    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def cmd_conflicts(settings: Settings, args: argparse.Namespace) -> int:
    """List, show or resolve conflicts."""
    store = _store(settings)
    if args.action == "list":
        rows = store.conflicts(only_open=not args.all)
        print(_table(rows, ["id", "status", "field", "kind", "policy", "crm_value", "erp_value", "base",
                            "resolution", "crm_id", "erp_id"]))
        return 0
    if args.id is None:
        raise SyncError(f"conflicts {args.action} needs a conflict id", hint="crm-erp-sync conflicts list")
    if args.action == "show":
        row = store.conflict(args.id)
        if row is None:
            raise SyncError(f"no conflict {args.id}")
        print(json.dumps(row, ensure_ascii=False, indent=2, default=str))
        return 0
    from streams.reconcile.resolve import parse_value, resolve

    if (args.take is None) == (args.value is None):
        raise SyncError("resolve needs exactly one of --take crm|erp or --value V")
    by = args.by or getpass.getuser()
    done = resolve(settings, store, args.id, args.take, None if args.value is None else parse_value(args.value), by)
    print(f"conflict {done['conflict']} resolved: {done['field']} = {done['value']!r}, "
          f"written to {', '.join(done['sent_to']) or 'nobody (both already hold it)'}")
    return 0


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    """List, show or replay dead letters (their bytes are in topic sync.dlq)."""
    store = _store(settings)
    if args.action == "replay":
        from streams.replay import replay

        sent = replay(settings, store, [args.id] if args.id is not None else None)
        print(f"replayed {sent} dead letter(s) to their original topics")
        return 0
    rows = store.dead_letters()
    if args.action == "show":
        rows = [r for r in rows if r["id"] == args.id]
        if not rows:
            raise SyncError(f"no dead letter {args.id}")
        print(json.dumps(rows[0], ensure_ascii=False, indent=2, default=str))
        return 0
    print(_table(rows, ["id", "stage", "topic", "partition", "offset", "item", "created_at", "replayed_at", "reason"]))
    return 0


def cmd_documents(settings: Settings, args: argparse.Namespace) -> int:
    """Documents waiting for a reference (pending) or changed after creation (diverged); accept one."""
    store = _store(settings)
    if args.accept:
        import uuid

        from streams.documents.engine import Documents
        try:
            uuid.UUID(args.accept)
        except ValueError:
            raise SyncError(f"{args.accept!r} is not a global id",
                            hint="crm-erp-sync documents --diverged lists them") from None
        from streams.documents.spec import load_documents

        documents = Documents(load_documents(settings.processors.documents), settings, store)
        try:
            if not documents.accept(args.accept):
                raise SyncError(f"no diverged document {args.accept}", hint="crm-erp-sync documents --diverged")
        finally:
            documents.close()
        print(f"document {args.accept} accepted: as it is now, it is the new baseline")
        return 0
    states = ["diverged"] if args.diverged else ["pending"] if args.pending else ["pending", "diverged"]
    print(_table(store.documents(states), ["rule", "state", "global_id", "crm_id", "erp_id", "updated_at",
                                           "reason"]))
    return 0


def cmd_identity(settings: Settings, args: argparse.Namespace) -> int:
    """The identity review queue, and a person's link / unlink decisions."""
    from streams.identity.decide import link, merge, unlink
    from streams.mapping.profile import load_profiles, profile_of

    profile = profile_of(load_profiles(settings.processors.profiles), args.entity)
    store = _store(settings)
    if args.action == "link":
        if not (args.crm and args.erp):
            raise SyncError("identity link needs --crm ID and --erp ID", hint="crm-erp-sync identity review")
        gid = link(profile, settings, store, args.crm, args.erp)
        print(f"linked crm {args.crm} and erp {args.erp} as {gid}; both rows are being re-read to align them")
        return 0
    if args.action == "merge":
        given = [(system, key) for system, key in (("crm", args.crm), ("erp", args.erp)) if key]
        if len(given) != 1 or not args.into:
            raise SyncError("identity merge needs one of --crm ID / --erp ID (the duplicate) and --into ID",
                            hint="crm-erp-sync identity review lists the duplicates")
        (system, duplicate), = given
        outcome = merge(profile, store, system, duplicate, args.into)
        print(f"merged {system} {duplicate} into {args.into}: {duplicate} is no longer synced; {outcome}")
        return 0
    if args.action == "unlink":
        if not args.crm:
            raise SyncError("identity unlink needs --crm ID")
        old, new = unlink(profile, settings, store, args.crm)
        print(f"unlinked: crm {args.crm} keeps {old}, its former ERP record is now {new}")
        return 0
    rows = [dict(zip(["id", "system", "source_id", "candidates", "reason"], r, strict=True))
            for r in store.open_reviews(profile.entity)]
    print(_table(rows, ["id", "system", "source_id", "candidates", "reason"]))
    return 0


def cmd_registry(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the embedded schema registry in the foreground."""
    from urllib.parse import urlsplit

    from streams.local.ports import ensure_port_free
    from streams.registry.server import RegistryServer
    from streams.registry.store import RegistryStore

    url = urlsplit(settings.registry.url)
    port = url.port or 80
    ensure_port_free(port, "local.registry_port")
    server = RegistryServer(
        RegistryStore(settings.store.conninfo()), url.hostname or "127.0.0.1", port,
        settings.registry.default_compatibility,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.httpd.shutdown())
    log.info("schema registry serving on %s", server.url)
    try:
        server.start()
        assert server._thread is not None
        while server._thread.is_alive():
            server._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """Run a benchmark on its own local services and print its figures."""
    from streams.bench import capture, cost, drain, faults, faust_ceiling, full, orders, peer, steady, sync
    from streams.bench import compare as compare_bench

    out = args.out or Path(f"bench-results/{args.which}.json")
    rates = tuple(float(r) for r in args.rates.split(","))
    runs: dict[str, tuple[Any, Callable[[], dict[str, Any]]]] = {
        "all": (full, lambda: full.run(rates=rates, seconds=args.seconds, edits=args.edits,
                                       accounts=args.accounts or 100_000, out=out, warmup_s=args.warmup)),
        "compare": (compare_bench, lambda: compare_bench.run(accounts=args.accounts or 100_000, out=out,
                                                             link=args.link)),
        "capture": (capture, lambda: capture.run(updates=args.updates, out=out,
                                                 modes=(args.capture_mode,) if args.capture_mode else capture.MODES)),
        "faust": (faust_ceiling, lambda: faust_ceiling.run(events=args.events, out=out)),
        "faults": (faults, lambda: faults.run(out=out)),
        "orders": (orders, lambda: orders.run(deals=args.deals, out=out)),
        "steady": (steady, lambda: steady.run(rates=rates, seconds=args.seconds, out=out,
                                              accounts=args.accounts or 300, workers=args.workers,
                                              warmup_s=args.warmup)),
        "sync": (sync, lambda: sync.run(rate=args.rate or 5.0, seconds=args.seconds, out=out)),
        "cost": (cost, lambda: cost.run(rate=args.rate or 200.0, seconds=args.seconds, out=out,
                                        warmup_s=args.warmup)),
        "drain": (drain, lambda: drain.run(edits=args.edits, workers=args.workers, out=out)),
        "initial": (drain, lambda: drain.run_initial(accounts=args.accounts or 100_000, workers=args.workers,
                                                     out=out)),
        "peer": (peer, lambda: peer.run(rates=rates, seconds=args.seconds, edits=args.edits, out=out,
                                        warmup_s=args.warmup)),
    }
    module, run = runs[args.which]
    print(module.format_result(run()))
    print(f"figures written to {out}")
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    """Check a deployment before its first start: one line per check, with the fix; status 1 if one fails."""
    from streams.doctor import doctor

    checks = doctor(settings)
    for check in checks:
        print(check.line(), flush=True)
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings", file=sys.stderr)
    return 1 if failed else 0


def cmd_roles(settings: Settings, args: argparse.Namespace) -> int:
    """Print the least-privilege SQL of one database, or its connector as the capture role runs it."""
    from streams.roles import capture_connector, render

    if not args.connector:
        sys.stdout.write(render(settings, args.database).text)
        return 0
    if args.database == "store":
        raise ConfigError("--connector is for a source database", hint="crm-erp-sync roles crm --connector")
    print(json.dumps(capture_connector(settings, args.database), indent=2, ensure_ascii=False))
    return 0


def cmd_render_kubernetes(settings: Settings, args: argparse.Namespace) -> int:
    """Write the Kubernetes resources generated from connectors/, the profiles and monitoring/."""
    from streams.kube import render

    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render(settings).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


def cmd_demo_seed(settings: Settings, args: argparse.Namespace) -> int:
    """Create the demo CRM and ERP schemas and synthetic rows in the configured databases (once)."""
    from streams.local.stack import seed_demo

    for system, what in seed_demo(settings).items():
        print(f"{system} ({settings.database(system).dbname}): {what}")
    return 0


def cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    """Read both databases through the profile(s): every record in one category; --repair makes sync events."""
    import json

    from streams.compare import compare, format_table, repair
    from streams.compare_documents import compare_documents, format_documents
    from streams.documents.spec import load_documents
    from streams.mapping.profile import load_profiles

    profiles = load_profiles(settings.processors.profiles)
    document_profile = load_documents(settings.processors.documents)
    chosen = [p for p in profiles if args.entity in (None, p.entity)]
    entities = {p.entity for p in profiles} | {r.entity for r in [*document_profile.creates, *document_profile.rollups]}
    if args.entity is not None and args.entity not in entities:
        raise SyncError(f"no profile or document rule for entity {args.entity!r}", hint=f"one of: {sorted(entities)}")
    store = _store(settings)

    def progress(system: str, done: int) -> None:
        if done and done % 50_000 == 0:
            print(f"… {system}: {done} rows read", file=sys.stderr, flush=True)

    reports = [compare(settings, p, store, pause_s=args.pause, progress=progress) for p in chosen]
    if args.repair:
        for profile, report in zip(chosen, reports, strict=True):
            done = repair(settings, profile, store, report)
            print(f"{profile.entity} repair: " + ", ".join(f"{k} {v}" for k, v in done.items()), file=sys.stderr)
    documents = compare_documents(settings, document_profile, store, args.entity)
    if args.format == "csv":
        import csv

        from streams.compare import CSV_HEADER

        out = csv.writer(sys.stdout)
        out.writerow(CSV_HEADER)
        out.writerows([row for r in reports for row in r.as_rows()] + [row for d in documents for row in d.as_rows()])
    elif args.format == "json":  # the entities' reports, then the document rules' (each has "rule" and "kind")
        rows = [r.as_dict() for r in reports] + [d.as_dict() for d in documents]
        print(json.dumps(rows, ensure_ascii=False, default=str, indent=2))
    else:
        print("\n\n".join([*(format_table(r) for r in reports), *([format_documents(documents)] if documents else [])]))
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """Who changed what, when and why: the sync's writes, from the audit trail."""
    import csv

    from streams import audit

    try:
        since = audit.parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise SyncError(f"--since {args.since!r}: {exc}", hint="an ISO time (2026-11-30T08:00) or an age (90m, 36h, 7d)"
                        ) from exc
    entries = audit.query(_store(settings).conn, args.global_id, args.system, args.field, since, args.limit)
    if args.format == "json":
        print(json.dumps(entries, ensure_ascii=False, default=str, indent=2))
    elif args.format == "csv":
        out = csv.DictWriter(sys.stdout, fieldnames=list(audit.COLUMNS))
        out.writeheader()
        out.writerows({k: json.dumps(v, ensure_ascii=False) if k in ("old_value", "new_value") else v
                       for k, v in e.items()} for e in entries)
    else:
        print("\n".join(audit.line(e) for e in entries) if entries else "no writes match")
    return 0


def cmd_plan(settings: Settings, args: argparse.Namespace) -> int:
    """What the first real run would write, as a dry run (sync.dry_run) recorded it; --reset forgets it."""
    from streams import plan

    store = _store(settings)
    if args.reset:
        from streams.topics import admin_client

        group = plan.group_id(settings.processors.app_id, True)
        try:
            admin_client(settings.kafka).delete_consumer_groups([group], request_timeout=30)[group].result(60)
        except Exception as exc:  # the group never existed is fine; a running dry-run worker is not
            if "GROUP_ID_NOT_FOUND" not in str(exc):
                raise SyncError(f"cannot delete consumer group {group}: {exc}",
                                hint="stop the dry-run workers first") from exc
        plan.reset(store.conn)
        print(f"plan forgotten: the next dry run starts from the beginning (consumer group {group} deleted)")
        return 0
    entries = plan.entries(store.conn, args.entity)
    if args.format == "json":
        print(json.dumps(entries, ensure_ascii=False, default=str, indent=2))
    else:
        print("\n".join(plan.summary(entries)))
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """Print the effective settings with secrets masked."""
    import yaml

    print(yaml.safe_dump(settings.masked(), allow_unicode=True, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option names its env var)."""
    parser = argparse.ArgumentParser(
        prog="crm-erp-sync",
        description="Real-time two-way CRM <-> ERP sync by change-data-capture.",
        epilog=f"Every setting of sync.yaml can be overridden by env {ENV_PREFIX}SECTION__KEY.",
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"settings file (env {CONFIG_ENV}; default ./sync.yaml if present, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = sub.add_parser("up", help="start the embedded stack (demo CRM + ERP, broker, registry, capture); Ctrl-C"
                                   " stops")
    up.add_argument("--erp", dest="erp_demo", choices=["demo", "erpnext"],
                    help="which demo ERP (local.erp_demo): the first, or the ERPNext-like one with its profiles")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a running `up`").set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="health of databases, replication slots, broker and registry")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_status)
    cap = sub.add_parser("capture", help="run capture alone: deploy the connectors to Kafka Connect and watch them"
                                         " (capture.mode connect), or run Debezium's embedded engine (embedded)")
    cap.add_argument("--source", action="append", choices=["crm", "erp"],
                     help=f"capture only this source (repeatable; env {ENV_PREFIX}CAPTURE__SOURCES)")
    cap.set_defaults(func=cmd_capture)
    sub.add_parser("worker", help="run the Faust processors alone (reconcile + appliers; several may share the load)"
                   ).set_defaults(func=cmd_worker)
    conf = sub.add_parser("conflicts", help="list, show or resolve conflicts (manual ones wait for a person)")
    conf.add_argument("action", choices=["list", "show", "resolve"])
    conf.add_argument("id", type=int, nargs="?", help="conflict id (show, resolve)")
    conf.add_argument("--all", action="store_true", help="list resolved ones too")
    conf.add_argument("--take", choices=["crm", "erp"], help="resolve with this system's value")
    conf.add_argument("--value", help="resolve with this value (JSON if it parses, else text)")
    conf.add_argument("--by", default=None,
                      help="who decides, for the audit trail (default: the operating-system user running this)")
    conf.set_defaults(func=cmd_conflicts)
    dlq = sub.add_parser("dlq", help="dead letters: list, show, or replay them after a fix")
    dlq.add_argument("action", choices=["list", "show", "replay"])
    dlq.add_argument("id", type=int, nargs="?", help="one dead letter (replay: default all not yet replayed)")
    dlq.set_defaults(func=cmd_dlq)
    docs = sub.add_parser("documents", help="documents pending (waiting for a linked account) or diverged"
                                            " (edited after creation); accept a diverged one")
    docs_which = docs.add_mutually_exclusive_group()
    docs_which.add_argument("--pending", action="store_true", help="only documents waiting to be created")
    docs_which.add_argument("--diverged", action="store_true", help="only documents changed after creation")
    docs_which.add_argument("--accept", metavar="GLOBAL_ID", help="a person settled it on the target")
    docs.set_defaults(func=cmd_documents)
    ident = sub.add_parser("identity", help="identity: the review queue of ambiguous matches and duplicates;"
                                            " link, unlink, merge")
    ident.add_argument("action", choices=["review", "link", "unlink", "merge"])
    ident.add_argument("--crm", help="the CRM record's id (link, unlink; merge: the duplicate)")
    ident.add_argument("--erp", help="the ERP record's key (link; merge: the duplicate)")
    ident.add_argument("--into", help="merge: the record of the same system that remains")
    ident.add_argument("--entity", help="which profile's entity (default: the first profile's, customer in the demo)")
    ident.set_defaults(func=cmd_identity)
    sub.add_parser("doctor", help="check a deployment before its first start (databases, roles, publication,"
                   " broker, registry, Kafka Connect): a line per check with the fix").set_defaults(func=cmd_doctor)
    roles = sub.add_parser("roles", help="print the least-privilege roles and grants of a database (run by its"
                           " owner; deploy/sql/ holds the demo's), rendered from the profiles")
    roles.add_argument("database", choices=["crm", "erp", "store"])
    roles.add_argument("--connector", action="store_true", help="print instead the source's connector as the"
                       " capture role runs it (the script's publication, the captured tables only)")
    roles.set_defaults(func=cmd_roles)
    kube = sub.add_parser("render-kubernetes", help="write the Strimzi KafkaConnectors, PrometheusRule and"
                          " dashboards ConfigMap rendered from connectors/ and monitoring/")
    kube.add_argument("--out", type=Path, default=Path("deploy/kubernetes/generated"))
    kube.set_defaults(func=cmd_render_kubernetes)
    sub.add_parser("demo-seed", help="create the demo CRM and ERP (schemas and synthetic rows) in the configured"
                   " databases, once (deploy/compose's demo profile runs it)").set_defaults(func=cmd_demo_seed)
    cmp = sub.add_parser("compare", help="read both databases through the profiles (read-only): every record in one"
                         " category (linked equal / drifted, eligible, not eligible and why, in review, unknown)")
    cmp.add_argument("--entity", help="one profile's entity (default: every profile)")
    cmp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    cmp.add_argument("--pause", type=float, default=0.0,
                     help="seconds to wait between two chunks of 5,000 rows, to spare a busy database (default 0)")
    cmp.add_argument("--repair", action="store_true", help="turn the findings into sync events (drifted and unknown"
                     " rows read again through capture, eligible records created); nothing is written directly")
    cmp.set_defaults(func=cmd_compare)
    aud = sub.add_parser("audit", help="the sync's writes to either system: what changed, when, and the change or"
                         " decision that caused it")
    aud.add_argument("--global-id", help="one record (its global id: compare, conflicts and status show them)")
    aud.add_argument("--system", choices=["crm", "erp"], help="writes to this system only")
    aud.add_argument("--field", help="one field (canonical name, document rule or column)")
    aud.add_argument("--since", help="from this time (ISO, UTC unless it says) or this age (90m, 36h, 7d)")
    aud.add_argument("--limit", type=int, default=1000, help="the newest N that match (default 1000)")
    aud.add_argument("--format", choices=["table", "json", "csv"], default="table")
    aud.set_defaults(func=cmd_audit)
    pln = sub.add_parser("plan", help="what the first real run would write (creates, writes per field, conflicts),"
                         " as a dry run (sync.dry_run: true) recorded it")
    pln.add_argument("--entity", help="one entity (default: all)")
    pln.add_argument("--format", choices=["table", "json"], default="table")
    pln.add_argument("--reset", action="store_true", help="forget the plan and the dry run's progress")
    pln.set_defaults(func=cmd_plan)
    sub.add_parser("registry", help="serve the embedded schema registry alone (on registry.url)"
                   ).set_defaults(func=cmd_registry)
    bench = sub.add_parser("bench", help="benchmarks on freshly started local services (not the running stack)")
    bench.add_argument("which", nargs="?", default="all",
                       choices=["all", "capture", "sync", "steady", "orders", "faust", "faults", "compare", "cost",
                                "drain", "initial", "peer"],
                       help="all (default): steady state, native logical replication, backlog drain and initial"
                            " sync in one run, as one table; capture: N single-row CRM updates -> broker;"
                            " sync: CRM edit -> ERP commit latency;"
                            " steady: fixed-rate edits on both systems, per-edit latency and peak memory;"
                            " orders: deals won in a burst -> ERP sales orders;"
                            " faust: Faust alone taking batches from a topic (its ceiling per hop);"
                            " faults: time to converge after faults injected during bursts of changes;"
                            " compare: the reconciliation report on N linked accounts;"
                            " cost: CPU microseconds and broker bytes per edit, per process and worker stage;"
                            " drain: a backlog of N CRM edits drained by --workers workers;"
                            " initial: N CRM accounts, none in the ERP, until all are created there;"
                            " peer: the sync side by side with Debezium's JDBC sink (steady rates and a backlog)")
    bench.add_argument("--updates", type=int, default=100_000, help="capture: single-row updates (default 100000)")
    bench.add_argument("--capture-mode", choices=["connect", "embedded"], default=None,
                       help="capture: only this capture mode (default: both, one after the other)")
    bench.add_argument("--rate", type=float, default=None,
                       help="sync: edits per second, fixed rate (default 5); cost: the same (default 200)")
    bench.add_argument("--workers", type=int, default=1, help="drain, initial, steady: worker processes (default 1)")
    bench.add_argument("--seconds", type=float, default=60.0,
                       help="sync, steady: duration of the load (per rate) (default 60)")
    bench.add_argument("--warmup", type=float, default=120.0,
                       help="steady, cost, peer, all: seconds of the load at the first rate before measuring, so that"
                            " Kafka's and Kafka Connect's JVMs have compiled their hot code, as a deployment's have"
                            " (default 120; 0: measure a cold stack)")
    bench.add_argument("--edits", type=int, default=100_000,
                       help="all, drain, peer: backlog edits, and the anchor's burst (default 100000)")
    bench.add_argument("--accounts", type=int, default=None,
                       help="all, initial: initial-sync accounts; compare: seeded accounts (default 100000);"
                            " steady: demo accounts the edits go round (default 300: most edits at 1,000/s are"
                            " superseded)")
    bench.add_argument("--link", choices=["tax_id", "bootstrap"], default="tax_id",
                       help="compare: fill the cross-reference by equal tax ids (default) or the identity bootstrap")
    bench.add_argument("--events", type=int, default=50_000, help="faust: records to take (default 50000)")
    bench.add_argument("--deals", type=int, default=500, help="orders: deals won in a burst (default 500)")
    bench.add_argument("--rates", default="200,1000,2000",
                       help="steady, peer: edits per second, one step each, comma-separated (default 200,1000,2000)")
    bench.add_argument("--out", type=Path, default=None, help="JSON output (default bench-results/<which>.json)")
    bench.set_defaults(func=cmd_bench)
    sub.add_parser("config", help="print the effective settings, secrets masked").set_defaults(func=cmd_config)
    return parser


def _is_unavailable(exc: Exception) -> bool:
    """A connection error of a database (psycopg) or a network service."""
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, ConnectionError))


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    if getattr(args, "erp_demo", None):  # `up --erp`: for this process and the ones it starts
        os.environ[f"{ENV_PREFIX}LOCAL__ERP_DEMO"] = args.erp_demo
    try:
        settings = load_settings(args.config)
        _configure_logging(settings)
        code = args.func(settings, args)
    except SyncError as exc:
        print(f"crm-erp-sync {args.command}: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a database or service away at start: one line, not a traceback
        if not _is_unavailable(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"crm-erp-sync {args.command}: error: {first} (hint: `crm-erp-sync status` shows what is down;"
              " a supervisor starts this again)", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
