"""Dry run: commands as plan entries, the plan's summary, the state tables a dry run keeps apart (pure)."""

from __future__ import annotations

from streams.plan import conflict_entry, entry, group_id, shadowed, summary

SET = {"op": "set", "system": "erp", "entity": "customer", "global_id": "g1", "key": "C1", "field": "email",
       "value_json": '"a@example.com"', "expect_json": '"b@example.com"', "values_json": None, "kind": "update",
       "decided_by": None, "cause_event": "crm.public.accounts/0/1"}


def test_a_command_is_what_it_would_write() -> None:
    assert entry(SET) == {"kind": "update", "op": "set", "system": "erp", "entity": "customer", "global_id": "g1",
                          "key": "C1", "field": "email", "value": "a@example.com", "expect": "b@example.com",
                          "decided_by": None, "cause_event": "crm.public.accounts/0/1"}
    create = entry({**SET, "op": "create", "field": "", "key": "", "values_json": '{"name": "x"}', "kind": None})
    assert (create["kind"], create["value"], create["expect"]) == ("create", {"name": "x"}, None)


def test_the_summary_counts_creates_writes_and_conflicts_per_entity() -> None:
    conflict = conflict_entry({"entity": "customer", "global_id": "g2", "field": "tax_id", "kind": "both_changed",
                               "policy": "manual", "base_json": '"a"', "crm_json": '"b"', "erp_json": '"c"',
                               "resolution": None})
    create = entry({**SET, "op": "document", "field": "sales_order", "values_json": "{}", "kind": "create"})
    lines = summary([entry(SET), entry({**SET, "global_id": "g3"}), conflict, create])
    assert lines == ["customer             1  conflict waiting for a person: tax_id",
                     "customer             1  create on erp (sales_order)",
                     "customer             2  write erp.email"]
    assert summary([]) == ["nothing planned yet"]


def test_a_dry_run_reads_and_writes_its_own_state_in_its_own_group() -> None:
    assert shadowed("SELECT state FROM sync.entity_state WHERE x") == "SELECT state FROM sync.plan_entity_state WHERE x"
    assert shadowed("INSERT INTO sync.documents AS d (rule)") == "INSERT INTO sync.plan_documents AS d (rule)"
    assert shadowed("nextval('sync.entity_state_version')") == "nextval('sync.entity_state_version')"
    assert (group_id("crm-erp-sync", True), group_id("crm-erp-sync", False)) == ("crm-erp-sync-dry-run",
                                                                                 "crm-erp-sync")
