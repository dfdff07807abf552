"""Identity with messy data and concurrency: twins link once, duplicates go to review, look-ups stay indexed."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from streams.identity.bootstrap import bootstrap, lock_id, records
from streams.identity.keys import IdentityKeys, match_keys
from streams.identity.match import Record
from streams.identity.resolver import resolve_many, resolve_new
from streams.local.harness import (
    REPO,
    Harness,
    group_lag,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.local.ports import free_port
from streams.mapping.profile import load_profile
from streams.settings import load_settings
from streams.store import Store

pytestmark = pytest.mark.integration
COMMANDS = ["sync.commands.crm", "sync.commands.erp"]
PROFILE = load_profile(REPO / "schemas" / "mappings" / "demo.yaml")
CITIES = ["上海", "北京", "深圳", "杭州", "成都", "武汉", "南京", "苏州", "天津", "重庆"]
TRADES = ["精密机械", "电子科技", "新材料", "物流", "医疗器械", "环保工程", "食品", "纺织", "软件", "化工"]


def company(i: int, kind: str = "") -> str:
    """A synthetic legal name, distinct per ``i`` (names overlap a lot in their bigrams, as real ones do)."""
    return f"{CITIES[i % 10]}{TRADES[i // 10 % 10]}{kind}{i}号有限公司"


@pytest.fixture(scope="module")
def stack(failures: Callable[[], bool]) -> Iterator[tuple[Harness, list[int]]]:
    """Capture and two workers in one consumer group (each with its metrics port)."""
    with scratch_harness("identity", failures) as h:
        ports = [free_port(), free_port()]
        h.write_config(processors={"metrics_port": ports[0]})
        with running(h.spawn("capture")):
            wait_for_capture(h)
            with running(h.spawn("worker", log_name="worker.log")), running(h.spawn(
                    "worker", log_name="worker2.log", env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(ports[1])})):
                wait_for_identity(h)
                yield h, ports


def wait_settled(h: Harness) -> None:
    """Every record's hold has passed, and the workers applied whatever creation was due (or dropped it: linked)."""
    def pending() -> int:
        with h.connect("sync") as conn:
            return int(scalar(conn, "SELECT count(*) FROM sync.pending_creates"))

    wait_for(lambda: pending() == 0, 120, 0.5, "every creation hold to pass")
    topics = ["crm.public.accounts", "erp.public.customers", "sync.changes.customer", *COMMANDS]
    wait_for(lambda: group_lag(h.client_config(), topics) == 0, 90, 0.5, "the workers to apply what is due")


def test_twins_written_at_once_on_both_sides_link_exactly_once(stack: tuple[Harness, list[int]]) -> None:
    """200 CRM accounts and their 200 ERP twins, inserted concurrently, shared by two workers: 200 links, 0 creates."""
    h, _ = stack
    n = 200
    taxes = [f"91TWIN{i:012d}" for i in range(n)]

    def insert(system: str) -> None:
        with h.connect(system) as conn:
            for i, tax in enumerate(taxes if system == "crm" else reversed(taxes)):
                i = i if system == "crm" else n - 1 - i
                if system == "crm":  # tier A: created in the ERP if no twin were found
                    conn.execute("INSERT INTO accounts (name, legal_name, uscc, tier) VALUES (%s, %s, %s, 'A')",
                                 (f"孪生{i}", company(i, "孪生"), tax))
                else:
                    conn.execute("INSERT INTO customers (full_name, tax_no) VALUES (%s, %s)", (company(i, "孪生"), tax))

    threads = [threading.Thread(target=insert, args=(s,)) for s in ("crm", "erp")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with h.connect("crm") as crm, h.connect("erp") as erp:
        crm_ids = dict(crm.execute("SELECT id::text, uscc FROM accounts WHERE uscc LIKE '91TWIN%'").fetchall())
        erp_ids = dict(erp.execute("SELECT cust_no, tax_no FROM customers WHERE tax_no LIKE '91TWIN%'").fetchall())
    with h.connect("sync") as conn:
        def pairs() -> list[tuple[str, str, str]]:
            return conn.execute("SELECT crm_id, erp_id, linked_by FROM sync.xref WHERE crm_id = ANY(%s)"
                                " AND erp_id IS NOT NULL", (list(crm_ids),)).fetchall()

        wait_for(lambda: len(pairs()) == n, 120, 0.5, f"{n} twins linked")
        linked = pairs()
    assert all(crm_ids[c] == erp_ids[e] and how == "exact" for c, e, how in linked), linked[:5]
    assert len({e for _, e, _ in linked}) == n
    wait_settled(h)
    with h.connect("crm") as crm, h.connect("erp") as erp:  # nothing was created on either side
        assert scalar(crm, "SELECT count(*) FROM accounts WHERE legal_name LIKE '%%孪生%%'") == n
        assert scalar(erp, "SELECT count(*) FROM customers WHERE full_name LIKE '%%孪生%%'") == n


def test_duplicates_in_one_system_go_to_review_as_groups_and_a_decision_settles_them(
        stack: tuple[Harness, list[int]]) -> None:
    """20 CRM accounts sharing tax ids in pairs: none created or linked, 10 review groups; merge and link settle."""
    h, _ = stack
    with h.connect("crm") as crm:
        ids = [scalar(crm, "INSERT INTO accounts (name, legal_name, uscc, tier) VALUES (%s, %s, %s, 'A')"
                           " RETURNING id::text", f"重复{i}", company(i, "重复"), f"91DUPS{i // 2:012d}")
               for i in range(20)]
    with h.connect("sync") as conn:
        def reviews() -> dict[str, set[str]]:
            rows = conn.execute("SELECT source_id, candidates FROM sync.identity_review WHERE system = 'crm'"
                                " AND status = 'open' AND source_id = ANY(%s)", (ids,)).fetchall()
            return {source: {source, *candidates} for source, candidates in rows}

        wait_for(lambda: len(reviews()) == 20, 120, 0.5, "20 accounts in identity review")
        groups = {frozenset(g) for g in reviews().values()}
    assert groups == {frozenset(ids[i:i + 2]) for i in range(0, 20, 2)}  # 10 groups: the pairs
    wait_settled(h)
    with h.connect("erp") as erp:  # nothing created
        assert scalar(erp, "SELECT count(*) FROM customers WHERE tax_no LIKE '91DUPS%%'") == 0
    listed = subprocess.run(h.cli("identity", "review"), capture_output=True, text=True, check=True)
    assert ids[0] in listed.stdout and "duplicates" in listed.stdout

    # A person merges the first pair in the CRM: the remaining account is created in the ERP, once.
    done = subprocess.run(h.cli("identity", "merge", "--crm", ids[0], "--into", ids[1]),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with h.connect("erp") as erp:
        wait_for(lambda: scalar(erp, "SELECT count(*) FROM customers WHERE tax_no = %s", "91DUPS000000000000"),
                 60, 0.5, "the remaining account created in the ERP")
        assert erp.execute("SELECT full_name FROM customers WHERE tax_no = '91DUPS000000000000'").fetchall() \
            == [(company(1, "重复"),)]
    # The second pair has a twin in the ERP: two CRM candidates share its tax id, so it waits too.
    with h.connect("erp") as erp:
        twin = scalar(erp, "INSERT INTO customers (full_name, tax_no) VALUES ('孪生待定贸易有限公司',"
                           " '91DUPS000000000001') RETURNING cust_no")
    with h.connect("sync") as conn:
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM sync.identity_review WHERE system = 'erp'"
                                      " AND source_id = %s AND status = 'open'", twin), 60, 0.5, "the twin in review")
        assert scalar(conn, "SELECT crm_id FROM sync.xref WHERE erp_id = %s", twin) is None
    done = subprocess.run(h.cli("identity", "link", "--crm", ids[3], "--erp", twin),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with h.connect("crm") as crm:  # linked and aligned: the ERP owns the legal name
        wait_for(lambda: scalar(crm, "SELECT legal_name FROM accounts WHERE id = %s", ids[3]) == "孪生待定贸易有限公司",
                 60, 0.5, "the linked pair aligned")
    with h.connect("sync") as conn:
        assert conn.execute("SELECT linked_by, erp_id FROM sync.xref WHERE crm_id = %s", (ids[3],)).fetchone() \
            == ("manual", twin)
        assert scalar(conn, "SELECT linked_by FROM sync.xref WHERE crm_id = %s", ids[0]) == "merged"
    wait_settled(h)
    with h.connect("crm") as crm, h.connect("erp") as erp:  # the remaining account of the merged pair, the twin
        assert scalar(erp, "SELECT count(*) FROM customers WHERE tax_no LIKE '91DUPS%%'") == 2
        assert scalar(crm, "SELECT count(*) FROM accounts WHERE uscc LIKE '91DUPS%%'") == 20


class CountingConnection:
    """A connection that counts the statements sent through it (``execute``, and cursors' ``execute``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn, self.statements = conn, 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return self.conn.execute(*args, **kwargs)

    def cursor(self) -> Any:
        outer, cur = self, self.conn.cursor()

        class Counted:
            def __enter__(self) -> Counted:
                cur.__enter__()
                return self

            def __exit__(self, *exc: Any) -> None:
                cur.__exit__(*exc)

            def execute(self, *args: Any, **kwargs: Any) -> Any:
                outer.statements += 1
                return cur.execute(*args, **kwargs)

        return Counted()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def _fresh_store(h: Harness, name: str) -> Store:
    with h.connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    store = Store({**h.conninfo("sync"), "dbname": name})
    store.migrate()
    return store


def _drop(h: Harness, *names: str) -> None:
    with h.connect("postgres") as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_new_record_among_100k_linked_pairs_takes_a_bounded_number_of_indexed_queries(
        stack: tuple[Harness, list[int]]) -> None:
    """The decision for one new record reads no table whole: a fixed count of statements, none a sequential scan
    of the index or cross-reference tables."""
    h, _ = stack
    store = _fresh_store(h, "identity_scale")
    conninfo = store.conninfo
    n, keys, entity = 100_000, IdentityKeys(PROFILE.entity), PROFILE.entity
    started = time.monotonic()
    with store.conn.transaction():
        store.conn.execute(
            "INSERT INTO sync.xref (entity, global_id, crm_id, erp_id, linked_by) SELECT %s, gen_random_uuid(),"
            " 'c' || i, 'E' || i, 'exact' FROM generate_series(0, %s) AS i", (entity, n - 1))
        for chunk in range(0, n, 10_000):  # as the bootstrap indexes linked records: no bigrams
            recs = [Record(system, f"{'c' if system == 'crm' else 'E'}{i}", (f"91SCAL{i:012d}",), company(i))
                    for i in range(chunk, chunk + 10_000) for system in ("crm", "erp")]
            keys.put(store.conn, recs, linked={(r.system, r.source_id) for r in recs})
        # And 1,000 ERP records still without a counterpart, with names much like the new one's: fuzzy candidates.
        store.conn.execute("INSERT INTO sync.xref (entity, global_id, erp_id, linked_by) SELECT %s, gen_random_uuid(),"
                           " 'F' || i, 'single' FROM generate_series(0, 999) AS i", (entity,))
        keys.put(store.conn, [Record("erp", f"F{i}", (None,), f"{CITIES[3]}{TRADES[5]}{i}号有限公司")
                              for i in range(1000)])
        # And 20,000 more with names sharing no bigram with it: the bigram index is not read whole either.
        store.conn.execute("INSERT INTO sync.xref (entity, global_id, erp_id, linked_by) SELECT %s, gen_random_uuid(),"
                           " 'G' || i, 'single' FROM generate_series(0, 19999) AS i", (entity,))
        keys.put(store.conn, [Record("erp", f"G{i}", (None,), f"{CITIES[i % 10]}{TRADES[i % 5]}{i}号有限公司")
                              for i in range(20_000)])
    store.conn.execute("ANALYZE")
    print(f"\nindexed {2 * n} records in {time.monotonic() - started:.1f} s")

    def scans() -> dict[str, tuple[int, int]]:
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return {r[0]: (r[1], r[2] or 0) for r in conn.execute(
                "SELECT relname, seq_scan, idx_scan FROM pg_stat_user_tables WHERE schemaname = 'sync'"
                " AND relname IN ('xref', 'identity_keys', 'identity_records', 'identity_grams')").fetchall()}

    before = scans()
    counting = CountingConnection(store.conn)
    store._conn = counting  # type: ignore[assignment]
    # A new CRM account whose name shares bigrams with every free ERP record, with no twin: it stands alone.
    name = f"{CITIES[3]}{TRADES[5]}新开分公司"
    row = {"id": "new-one", "legal_name": name, "uscc": "91SCALNEW000000001"}
    decision = resolve_new(PROFILE, store, "crm", "new-one", row, 3.0)
    store._conn = counting.conn
    store.conn.execute("SELECT pg_stat_force_next_flush()")
    store.conn.commit()
    assert decision.kind == "single" and not decision.reviewed
    # lock x2 (tax id, name); index x3; own link; duplicates; candidates x3; new link x2; pending create
    assert counting.statements <= 13, counting.statements
    after = wait_for(lambda: (s := scans()) and s != before and s, 30, 0.5, "the table statistics")
    seq = {table: after[table][0] - before[table][0] for table in after}
    assert seq == {"xref": 0, "identity_keys": 0, "identity_records": 0, "identity_grams": 0}, seq
    # And a twin arriving on the ERP links to it through the same index.
    store._conn = counting = CountingConnection(store.conn)  # type: ignore[assignment]
    twin = resolve_new(PROFILE, store, "erp", "E-new", {"cust_no": "E-new", "full_name": name,
                                                         "tax_no": "91SCALNEW000000001"}, 3.0)
    assert (twin.kind, twin.link.crm_id, twin.link.erp_id) == ("exact", "new-one", "E-new")
    # lock x2; index x3; own link; duplicates; candidates x3; the match's link; attach x2; its bigrams dropped
    assert counting.statements <= 14, counting.statements
    store.close()
    _drop(h, "identity_scale")


def test_records_decided_together_are_decided_as_one_by_one_in_a_few_statements_per_chunk(
        stack: tuple[Harness, list[int]]) -> None:
    """A batch of new records (an initial sync's) through ``resolve_many`` gets the decisions ``resolve_new`` gives
    one by one, on the same index: twins, duplicates, fuzzy matches and records standing alone; and the records
    standing alone cost a few statements per chunk of 250, not a dozen each."""
    h, _ = stack
    free_erp = [("E-twin", "91TWIN0000000000X1", "远东精密机械有限公司"),
                ("E-fuzzy", None, "宁波甬江环保工程设备有限公司")]
    lone = [(f"c-lone-{i}", f"91LONE{i:012d}", f"Lone Harbour Trading {i} Ltd") for i in range(600)]
    batch = [*lone[:300],
             ("c-twin", "91TWIN0000000000X1", "远东精密机械(中国)有限公司"),
             ("c-dup-1", "91DUP00000000000D1", "北海食品有限公司"), ("c-dup-2", "91DUP00000000000D1", "北海食品公司"),
             ("c-fuzzy", None, "宁波甬江环保工程设备公司"), *lone[300:]]
    outcomes = {}
    for db in ("identity_one_by_one", "identity_together"):
        store = _fresh_store(h, db)
        keys = IdentityKeys(PROFILE.entity)
        with store.conn.transaction():
            for erp_id, _, _ in free_erp:
                store.add_link(PROFILE.entity, None, erp_id, "single")
            keys.put(store.conn, [Record("erp", e, (t,), n) for e, t, n in free_erp])
            # as the normalize stage does before deciding: the batch's records indexed
            keys.put(store.conn, [Record("crm", c, (t,), n) for c, t, n in batch])
        rows = [("crm", c, {"id": c, "uscc": t, "legal_name": n}) for c, t, n in batch]
        counting = CountingConnection(store.conn)
        store._conn = counting  # type: ignore[assignment]
        if db == "identity_one_by_one":
            decided = {("crm", c): resolve_new(PROFILE, store, s, c, row, 3.0) for s, c, row in rows}
        else:
            decided = resolve_many(PROFILE, store, rows, 3.0)
        store._conn = counting.conn
        indexed = [Record("crm", c, (t,), n) for c, t, n in batch]
        assert keys.changed(store.conn, indexed) == []  # as they are: not indexed again (a tax id absent included)
        renamed = Record("crm", "c-fuzzy", (None,), "宁波甬江环保工程公司")
        assert keys.changed(store.conn, [*indexed[:3], renamed]) == [renamed]
        pending = {str(r[0]) for r in store.conn.execute("SELECT source_id FROM sync.pending_creates").fetchall()}
        outcomes[db] = ({key: (d.kind, d.reviewed, d.link.crm_id, d.link.erp_id) for key, d in decided.items()},
                        pending, counting.statements)
        store.close()
    _drop(h, "identity_one_by_one", "identity_together")
    one_by_one, together = outcomes["identity_one_by_one"], outcomes["identity_together"]
    assert together[:2] == one_by_one[:2]
    decisions = together[0]
    assert decisions[("crm", "c-twin")][0] == "exact" and decisions[("crm", "c-twin")][3] == "E-twin"
    assert {decisions[("crm", c)][:2] for c in ("c-dup-1", "c-dup-2")} == {("duplicate", True)}
    assert decisions[("crm", "c-fuzzy")][3] == "E-fuzzy"
    assert all(decisions[("crm", c)][:2] == ("single", False) for c, _, _ in lone)
    assert together[1] == {c for c, _, _ in lone}  # only the records standing alone are to be created
    # 600 records alone in 3 chunks (at most 10 statements each) and 4 decided one by one (at most 14 each)
    assert together[2] <= 3 * 10 + 4 * 14 < one_by_one[2], (together[2], one_by_one[2])


def test_a_bootstrap_waits_for_another_workers_past_the_lock_timeout_then_finds_it_done(
        stack: tuple[Harness, list[int]]) -> None:
    """Workers started together on a fresh store: one bootstraps, the other waits however long that takes (an
    initial sync's outlasts the store's lock_timeout, which used to end the waiting worker), then adds nothing."""
    h, _ = stack
    store = _fresh_store(h, "identity_bootstrap_wait")
    settings = load_settings(h.config_path)
    name = "bootstrap-wait-test"
    impatient = Store({**store.conninfo, "options": "-c lock_timeout=1000", "application_name": name})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["counts"] = bootstrap(PROFILE, settings, impatient)
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc

    def waited_s() -> float:
        return float(scalar(store.conn, "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)"
                                        " FROM pg_stat_activity WHERE application_name = %s"
                                        " AND query LIKE '%%pg_try_advisory_xact_lock%%'", name))

    def links() -> list[tuple[Any, ...]]:
        return store.conn.execute("SELECT entity, crm_id, erp_id, linked_by FROM sync.xref ORDER BY 1, 2, 3").fetchall()

    try:
        with psycopg.connect(**store.conninfo, autocommit=True) as other:  # another worker's bootstrap under way
            other.execute("SELECT pg_advisory_lock(%s)", (lock_id(PROFILE.entity),))
            thread = threading.Thread(target=run)
            thread.start()
            wait_for(lambda: waited_s() > 3.0 or not thread.is_alive(), 60, 0.2, "the bootstrap to wait 3 s")
            assert thread.is_alive(), outcome  # still waiting, three times the lock timeout later
            assert scalar(store.conn, "SELECT count(*) FROM sync.identity_records") == 0
        thread.join(120)  # the other connection closed: its lock went
        assert "error" not in outcome, outcome
        assert sum(outcome["counts"].values()) > 0
        before = links()
        index_rows = "SELECT (SELECT count(*) FROM sync.identity_keys) + (SELECT count(*) FROM sync.identity_grams)"
        indexed = scalar(store.conn, index_rows)
        bootstrap(PROFILE, settings, store)  # the worker that waited, had it started after: nothing to add
        assert links() == before
        assert scalar(store.conn, index_rows) == indexed
    finally:
        impatient.conn.close()
        store.conn.close()
        _drop(h, "identity_bootstrap_wait")


def test_a_record_indexed_free_before_and_linked_by_a_bootstrap_is_no_fuzzy_candidate_after_it(
        stack: tuple[Harness, list[int]]) -> None:
    """A worker stopped with a CRM record indexed free (its name bigrams in the index); its ERP twin was written
    meanwhile: the next bootstrap links them and drops that record's bigrams."""
    h, _ = stack
    store = _fresh_store(h, "identity_bootstrap_grams")
    settings = load_settings(h.config_path)
    keys = IdentityKeys(PROFILE.entity)
    erp_keys = {v: r for r in records(PROFILE, settings, "erp") for k, v in match_keys(r) if k == "exact1"}
    crm = next(r for r in records(PROFILE, settings, "crm") for k, v in match_keys(r)
               if k == "exact1" and v in erp_keys)

    def grams() -> int:
        return int(scalar(store.conn, "SELECT coalesce(sum(cardinality(grams)), 0) FROM sync.identity_grams"
                                      " WHERE system = 'crm' AND source_id = %s", crm.source_id))

    try:
        with store.conn.transaction():
            keys.put(store.conn, [crm])  # free: with its bigrams
        assert grams() > 0
        bootstrap(PROFILE, settings, store)
        link = store.link_of(PROFILE.entity, "crm", crm.source_id)
        assert link is not None and link.erp_id is not None
        assert grams() == 0
    finally:
        store.conn.close()
        _drop(h, "identity_bootstrap_grams")


def test_bigram_rows_of_an_earlier_version_are_moved_into_one_array_per_record(
        stack: tuple[Harness, list[int]]) -> None:
    """A store written before bigrams had their own table (one ``identity_keys`` row of kind ``gram`` each):
    the next start's migration makes each record's bigrams one array, and a look-up finds the record by them."""
    h, _ = stack
    store = _fresh_store(h, "identity_gram_rows")
    try:
        with store.conn.transaction():
            store.add_link(PROFILE.entity, None, "E-old", "single")
            IdentityKeys(PROFILE.entity).put(store.conn, [Record("erp", "E-old", (None,), "远东精密机械有限公司")])
            grams = store.conn.execute("SELECT grams FROM sync.identity_grams").fetchall()
            assert len(grams) == 1
            store.conn.execute("DELETE FROM sync.identity_grams")
            store.conn.execute("INSERT INTO sync.identity_keys (entity, kind, value, system, source_id)"
                               " SELECT %s, 'gram', g, 'erp', 'E-old' FROM unnest(%s::text[]) AS g",
                               (PROFILE.entity, grams[0][0]))
        store.migrate()
        assert store.conn.execute("SELECT system, source_id, grams FROM sync.identity_grams").fetchall() \
            == [("erp", "E-old", grams[0][0])]
        assert scalar(store.conn, "SELECT count(*) FROM sync.identity_keys WHERE kind = 'gram'") == 0
        new = Record("crm", "c-new", (None,), "远东精密机器有限公司")
        found = IdentityKeys(PROFILE.entity).candidates(store.conn, new)
        assert [r.source_id for r in found] == ["E-old"]
    finally:
        store.conn.close()
        _drop(h, "identity_gram_rows")
