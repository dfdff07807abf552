"""What the sync needs of each source database, derived from the configuration alone. Pure.

The captured tables are those the profiles map and the document profiles watch; the columns it
updates are the mapped ones of each side, the deactivation fields, the columns rollup queries
return and the columns every write stamps; the tables it inserts into are those its create rules
write. ``doctor`` checks a deployment against it and ``roles`` renders the least-privilege grants
from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from streams.settings import Settings


@dataclass
class Access:
    """What the sync needs of one source database, from the configuration."""

    captured: set[str] = field(default_factory=set)  # schema.table
    updates: dict[str, set[str]] = field(default_factory=dict)  # schema.table -> columns written
    inserts: set[str] = field(default_factory=set)  # schema.table the create rules insert into

    def update(self, table: str, columns: set[str] | list[str] | tuple[str, ...]) -> None:
        self.updates.setdefault(table, set()).update(columns)


def needs(settings: Settings) -> dict[str, Access]:
    """Per source system: the tables captured, the columns written, the tables inserted into."""
    from streams.documents.spec import CreateRule, RollupRule, load_documents
    from streams.mapping.profile import load_profiles

    out = {s: Access() for s in ("crm", "erp")}
    for profile in load_profiles(settings.processors.profiles):
        for system in ("crm", "erp"):
            table = profile.table_of(system)
            out[system].captured.add(table)
            out[system].captured.update(profile.watched(system))  # read by queried sides
            for spec in profile.fields.values():
                side = spec.side(system)
                if spec.synced and side is not None and not side.read_only:
                    out[system].update(table, side.columns())
            rule = profile.deactivation(system)
            side = profile.fields[rule.field].side(system) if rule and rule.field in profile.fields else None
            if side is not None:
                out[system].update(table, side.columns())
            if table in out[system].updates and system in profile.sources:  # every write also sets the stamp
                out[system].update(table, list(profile.sources[system].stamp))
            if profile.create_rule("erp" if system == "crm" else "crm") is not None:
                out[system].inserts.add(table)
    for doc in load_documents(settings.processors.documents).rules:
        out[doc.source].captured.update(doc.watch)
        if isinstance(doc, CreateRule):
            out[doc.target].inserts.add(doc.target_spec.table)
            if doc.target_spec.lines is not None:
                out[doc.target].inserts.add(doc.target_spec.lines.table)
        elif isinstance(doc, RollupRule):
            out[doc.target].update(doc.target_table, select_names(doc.read) + list(doc.stamp))
    return out


def quoted(table: str) -> str:
    """``schema.table`` as a quoted SQL identifier."""
    schema, _, name = table.partition(".")
    return f'"{schema}"."{name}"'


def select_names(query: str) -> list[str]:
    """The names of the columns a ``SELECT`` returns (each item's alias, or its last identifier)."""
    text = re.sub(r"--[^\n]*", " ", query)
    start = re.search(r"\bselect\b", text, re.IGNORECASE)
    if start is None:
        raise ValueError(f"not a SELECT: {query[:60]!r}")
    items, depth, quoted, current = [], 0, False, ""
    for i, ch in enumerate(text[start.end():], start.end()):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            items.append(current)
            current = ""
            continue
        elif not quoted and depth == 0 and re.match(r"\bfrom\b", text[i:], re.IGNORECASE) and (
                i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            break
        current += ch
    items.append(current)
    names = []
    for item in items:
        found = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", item.strip())
        if found is None:
            raise ValueError(f"a select item without a name (give it AS name): {item.strip()[:60]!r}")
        names.append(found.group(1))
    return names
