"""Identity resolution: which record of the other system is the same company. Pure.

Order (architecture decision 7): exact keys (tax number / USCC, ...), then the normalised company
name, then similarity of names with the region removed above a threshold. More than one candidate
at any step, or two fuzzy candidates within ``review_margin``, goes to the review queue: never
linked without a person.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import cached_property, lru_cache
from typing import Literal

LEGAL_FORMS = (
    "股份有限公司", "有限责任公司", "有限公司", "集团公司", "总公司", "分公司", "公司",
    "co.,ltd.", "co.,ltd", "co.ltd.", "co.ltd", "company limited", "corporation", "limited", "corp.",
    "inc.", "ltd.", "ltd", "co.",
)
CHINA = ("(中国)", "(中國)", "(china)")
# Province / city names and administrative suffixes removed for the fuzzy key only.
REGIONS = (
    "北京", "上海", "天津", "重庆", "深圳", "广州", "杭州", "苏州", "南京", "成都", "武汉", "西安", "青岛", "宁波",
    "厦门", "长沙", "合肥", "郑州", "东莞", "佛山", "无锡", "济南", "沈阳", "大连", "福州", "昆明", "哈尔滨",
    "广东", "江苏", "浙江", "山东", "河南", "四川", "湖北", "湖南", "福建", "安徽", "河北", "辽宁", "陕西",
)
_REGION_RE = re.compile("(" + "|".join(REGIONS) + ")(省|市|区)?")
_PUNCT_RE = re.compile(r"[\s()\[\]{}.,·、，。\-_/&'\"]+")

Kind = Literal["exact", "name", "fuzzy", "review", "none"]


def normalize_name(name: str | None) -> str:
    """Company name for equality: width and case folded, spaces, '(中国)' and legal form removed."""
    if not name:
        return ""
    text = unicodedata.normalize("NFKC", name).lower()
    text = "".join(text.split())
    for marker in CHINA:
        text = text.replace(marker, "")
    changed = True
    while changed:
        changed = False
        for form in LEGAL_FORMS:
            if text.endswith(form) and len(text) > len(form):
                text = text[: -len(form)].rstrip(",.")
                changed = True
    return text


def fuzzy_key(name: str | None) -> str:
    """Normalised name without regions and punctuation, for similarity."""
    text = normalize_name(name)
    text = _REGION_RE.sub("", text)
    return _PUNCT_RE.sub("", text)


def normalize_key(value: str | None) -> str:
    """An identifier (tax number, e-mail) for equality."""
    return unicodedata.normalize("NFKC", value or "").strip().upper()


_DIGITS_RE = re.compile(r"\d+")


def similarity(a: str, b: str, at_least: float = 0.0) -> float:
    """0..1 similarity of two fuzzy keys; 0 when their numbers differ (第一分店 is not 第二分店: 1 vs 2).

    Also 0 when it cannot reach ``at_least``: difflib's cheap upper bounds of its ratio (by the
    lengths, then by the characters shared) rule most names out before the costly ratio.
    """
    if not a or not b:
        return 0.0
    (numbers_a, chars_a), (numbers_b, chars_b) = _profile(a), _profile(b)
    if numbers_a != numbers_b:
        return 0.0
    if at_least:
        total = len(a) + len(b)
        if 2.0 * min(len(a), len(b)) / total < at_least or 2.0 * (chars_a & chars_b).total() / total < at_least:
            return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


@lru_cache(maxsize=16_384)
def _profile(key: str) -> tuple[tuple[str, ...], Counter[str]]:
    """A fuzzy key's numbers and characters (a name is compared with many: worked out once)."""
    return tuple(_DIGITS_RE.findall(key)), Counter(key)


@dataclass(frozen=True)
class Record:
    """What identity needs of one record: its id, exact keys (in profile order) and name."""

    system: str
    source_id: str
    keys: tuple[str | None, ...]
    name: str | None

    @cached_property
    def exact(self) -> tuple[str, ...]:
        """Normalised exact keys ('' where absent)."""
        return tuple(normalize_key(k) for k in self.keys)

    @cached_property
    def normal_name(self) -> str:
        """The name for equality (:func:`normalize_name`); worked out once per record, as the others below."""
        return normalize_name(self.name)

    @cached_property
    def fuzzy(self) -> str:
        """The name for similarity (:func:`fuzzy_key`)."""
        return fuzzy_key(self.name)


@dataclass(frozen=True)
class Match:
    """The decision for one record."""

    kind: Kind
    target: Record | None = None
    score: float = 0.0
    candidates: tuple[Record, ...] = ()
    reason: str = ""


@dataclass
class Index:
    """Records of one system, indexed for matching (exact keys, names, name bigrams)."""

    records: dict[str, Record] = field(default_factory=dict)
    by_key: list[dict[str, set[str]]] = field(default_factory=list)
    by_name: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_bigram: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_numbers: dict[tuple[str, ...], set[str]] = field(default_factory=lambda: defaultdict(set))
    fuzzy: dict[str, str] = field(default_factory=dict)

    def add(self, rec: Record) -> None:
        """Index ``rec`` (replacing an earlier version of it)."""
        self.remove(rec.source_id)
        self.records[rec.source_id] = rec
        while len(self.by_key) < len(rec.keys):
            self.by_key.append(defaultdict(set))
        for i, key in enumerate(rec.exact):
            if key:
                self.by_key[i][key].add(rec.source_id)
        name = rec.normal_name
        if name:
            self.by_name[name].add(rec.source_id)
        fkey = rec.fuzzy
        self.fuzzy[rec.source_id] = fkey
        for gram in bigrams(fkey):
            self.by_bigram[gram].add(rec.source_id)
        self.by_numbers[_profile(fkey)[0]].add(rec.source_id)

    def remove(self, source_id: str) -> None:
        """Forget a record (it was linked, or deleted)."""
        rec = self.records.pop(source_id, None)
        if rec is None:
            return
        for i, key in enumerate(rec.exact):
            self.by_key[i].get(key, set()).discard(source_id)
        self.by_name.get(rec.normal_name, set()).discard(source_id)
        fkey = self.fuzzy.pop(source_id, "")
        for gram in bigrams(fkey):
            self.by_bigram.get(gram, set()).discard(source_id)
        self.by_numbers.get(_profile(fkey)[0], set()).discard(source_id)

    def _sharing(self, fkey: str) -> set[str]:
        """Records whose fuzzy key shares a bigram and every number with ``fkey`` (others' similarity is 0).

        Names with numbers (branches, numbered companies) are told apart by them at once, however
        many words they share.
        """
        grams = bigrams(fkey)
        same = self.by_numbers.get(_profile(fkey)[0], set())
        if len(same) <= 64:
            return {i for i in same if not grams.isdisjoint(bigrams(self.fuzzy[i]))}
        return set().union(*(self.by_bigram.get(g, set()) for g in grams)) & same

    def _get(self, ids: Iterable[str]) -> tuple[Record, ...]:
        return tuple(sorted((self.records[i] for i in ids), key=lambda r: r.source_id))

    def match(self, rec: Record, threshold: float, margin: float, upto: str = "fuzzy") -> Match:
        """Find ``rec``'s counterpart among the indexed records, trying kinds of match up to ``upto``.

        ``upto`` (exact, name, fuzzy) stops early: the similarity of a name to every name sharing a
        bigram with it is the costly part, needless while stronger matches are still being decided.
        """
        for i, key in enumerate(rec.exact):
            if not key or i >= len(self.by_key):
                continue
            hits = self.by_key[i].get(key, set())
            if len(hits) == 1:
                return Match("exact", self._get(hits)[0], 1.0, reason=f"exact key #{i + 1}")
            if len(hits) > 1:
                return Match("review", None, 1.0, self._get(hits), f"{len(hits)} records share exact key #{i + 1}")
        if upto == "exact":
            return Match("none", None, 0.0, reason="no exact key shared")
        name = rec.normal_name
        hits = self.by_name.get(name, set()) if name else set()
        if len(hits) == 1:
            return Match("name", self._get(hits)[0], 1.0, reason="same normalised name")
        if len(hits) > 1:
            return Match("review", None, 1.0, self._get(hits), f"{len(hits)} records share the normalised name")
        if upto == "name":
            return Match("none", None, 0.0, reason="no normalised name shared")
        fkey = rec.fuzzy
        pool = self._sharing(fkey) if fkey else set()
        above = sorted(((s, i) for i in pool if (s := similarity(fkey, self.fuzzy[i], threshold)) >= threshold),
                       reverse=True)
        if not above:
            return Match("none", None, 0.0, reason=f"no name with a similarity of {threshold:.2f} or more")
        if len(above) > 1 and above[0][0] - above[1][0] < margin:
            close = [i for s, i in above if above[0][0] - s < margin]
            return Match("review", None, above[0][0], self._get(close),
                         f"{len(close)} names within {margin:.2f} of the best ({above[0][0]:.2f})")
        return Match("fuzzy", self.records[above[0][1]], above[0][0], reason=f"similarity {above[0][0]:.2f}")


def bigrams(text: str) -> set[str]:
    if len(text) < 2:
        return {text} if text else set()
    return {text[i : i + 2] for i in range(len(text) - 1)}


def duplicate_groups(records: Sequence[Record]) -> list[list[Record]]:
    """Groups of records (of one system) that share a normalised exact key or name: duplicates, for a person.

    Records joined through any shared key form one group (a shares a tax id with b, b a name with c).
    """
    parent = {r.source_id: r.source_id for r in records}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[tuple[str, str], str] = {}
    for r in records:
        keys = [(f"exact{i}", k) for i, k in enumerate(r.exact) if k]
        name = r.normal_name
        keys += [("name", name)] if name else []
        for key in keys:
            if key in first:
                parent[root(r.source_id)] = root(first[key])
            else:
                first[key] = r.source_id
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[root(r.source_id)].append(r)
    return [sorted(g, key=lambda r: r.source_id) for g in groups.values() if len(g) > 1]


def link_all(
    left: Sequence[Record], right: Sequence[Record], threshold: float, margin: float
) -> list[tuple[Record, Match]]:
    """Match every ``left`` record against ``right``; a linked right record is not offered again.

    Exact matches are decided first for all records, then names, then fuzzy, so a weaker match can
    never take a record a stronger one needed.
    """
    if not right:  # an initial sync's: nothing to match against (four passes of 100,000 records took 6 s)
        return [(rec, Match("none", None, 0.0, reason="no record on the other system")) for rec in left]
    index = Index()
    for rec in right:
        index.add(rec)
    decided: dict[str, Match] = {}
    for stage in ("exact", "name", "fuzzy"):
        for rec in left:
            if rec.source_id in decided:
                continue
            found = index.match(rec, threshold, margin, upto=stage)  # stronger kinds than ``stage`` were decided
            if found.kind == stage or (found.kind == "review" and _stage_of_review(found) == stage):
                decided[rec.source_id] = found
                if found.target is not None:
                    index.remove(found.target.source_id)
    return [(rec, decided.get(rec.source_id) or index.match(rec, threshold, margin)) for rec in left]


def _stage_of_review(found: Match) -> str:
    if "exact key" in found.reason:
        return "exact"
    if "normalised name" in found.reason:
        return "name"
    return "fuzzy"
