"""N-gram contamination between a training corpus and the eval sets: the rule, the corpus index, the report.

The rule is GPT-3's (Brown et al. 2020, appendix C) and Llama-2's: an eval item is **contaminated** when any of
its 13-grams of words occurs in the training text, "or [...] the whole example when it is shorter than
13-grams". Text is normalised as EleutherAI's Janitor (``lm_eval.decontamination.janitor``, the code behind
GPT-3's and the Pile's decontamination) does it: lower case, punctuation deleted, split on whitespace; we apply
it to Unicode (NFKC, case-folded, every character that is neither a letter, a digit nor a space deleted, the
underscore too), so ``get_weather(city='Paris')`` is the words ``getweathercityparis``.

13 words is long enough that a shared 13-gram is almost never chance or a common phrase (GPT-3 found the few
that are in boilerplate; we count every match, which errs towards calling an item contaminated), and short
enough that a question pasted into a longer training text, reworded around it, or cut, is still found.

The index holds a 64-bit hash of every 13-gram of the training text, sorted and deduplicated (8 bytes a
13-gram: the default corpus's ~0.3M words take ~2 MB), built once per run; an item is looked up with a
binary search of each of its 13-grams. Word hashes are Python's ``hash`` (salted per process: the index is
never saved, so it only has to agree with itself within the run); a 13-gram's hash is a sum of its words'
hashes times fixed odd 64-bit constants, one per position, modulo 2**64. Two different 13-grams share a hash
with probability ~2**-64, so a false match among a billion training 13-grams is below one in ten billion per
eval 13-gram.

Items shorter than 13 words are looked up whole: their word hashes are known before the corpus is read, so the
scan keeps just the corpus runs of those lengths that match one ("probes"), not an index per length.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentflan.eval.stats import wilson

N = 13  # words in an n-gram: GPT-3's and Llama-2's choice
WORST = 5  # items listed per set in the report
SNIPPET_WORDS = 24
_STRIP = re.compile(r"[^\w\s]|_")
# One odd 64-bit multiplier per position in an n-gram: the same words in another order hash differently.
_MULT = np.random.default_rng(13).integers(0, 2**62, size=N, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def words(text: str) -> list[str]:
    """The normalised words of ``text``: NFKC, case-folded, punctuation (and symbols, ``_``) deleted."""
    return _STRIP.sub("", unicodedata.normalize("NFKC", text).casefold()).split()


def _hashes(tokens: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)


def _grams(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of ``n`` consecutive words (``len - n + 1`` of them; none when shorter)."""
    m = len(word_hashes) - n + 1
    out = np.zeros(max(m, 0), dtype=np.uint64)
    for k in range(n if m > 0 else 0):
        out += word_hashes[k : k + m] * _MULT[k]
    return out


def gram_hashes(tokens: Sequence[str], n: int = N) -> np.ndarray:
    """The hashes of the n-grams of a word list, in order."""
    return _grams(_hashes(tokens), n)


@dataclass
class NgramIndex:
    """The training text's n-grams (sorted unique hashes) and which short probes it contains."""

    n: int
    grams: np.ndarray
    short: set[int] = field(default_factory=set)  # hashes of whole short items found in the corpus
    texts: int = 0
    words: int = 0
    seconds: float = 0.0

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self.grams) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        at = np.minimum(np.searchsorted(self.grams, hashes), len(self.grams) - 1)
        return self.grams[at] == hashes

    def stats(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "words": self.words,
            "unique_ngrams": int(len(self.grams)),
            "index_mb": round(self.grams.nbytes / 2**20, 2),
            "seconds": round(self.seconds, 2),
        }


def _batch(texts: list[list[str]], n: int, probes: dict[int, np.ndarray], found: set[int]) -> np.ndarray:
    """The n-grams of a batch of texts (none crossing from one text into the next), and the probes found."""
    flat = [w for t in texts for w in t]
    if not flat:
        return np.zeros(0, dtype=np.uint64)
    hashes = _hashes(flat)
    text_of = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    for length, wanted in probes.items():
        runs = _grams(hashes, length)
        runs = runs[text_of[: len(runs)] == text_of[length - 1 :]]
        found.update(int(h) for h in runs[np.isin(runs, wanted)])
    grams = _grams(hashes, n)
    return np.unique(grams[text_of[: len(grams)] == text_of[n - 1 :]])


def build_index(
    texts: Iterable[str], n: int = N, probes: Iterable[Sequence[str]] = (), batch_words: int = 500_000
) -> NgramIndex:
    """Read the training texts once: every n-gram's hash, and every probe (a short item's words) found whole.
    Texts are hashed in batches of ~``batch_words`` words, so memory is the index plus one batch."""
    start = time.perf_counter()
    by_length: dict[int, set[int]] = {}
    for p in probes:
        if 0 < len(p) < n:
            by_length.setdefault(len(p), set()).add(int(gram_hashes(p, len(p))[0]))
    wanted = {k: np.fromiter(v, dtype=np.uint64) for k, v in by_length.items()}
    found: set[int] = set()
    parts: list[np.ndarray] = []
    batch: list[list[str]] = []
    size = n_texts = n_words = 0
    for text in texts:
        tokens = words(text)
        batch.append(tokens)
        size += len(tokens)
        n_texts, n_words = n_texts + 1, n_words + len(tokens)
        if size >= batch_words:
            parts.append(_batch(batch, n, wanted, found))
            batch, size = [], 0
            if len(parts) >= 8:  # keep the pending parts few: merge them
                parts = [np.unique(np.concatenate(parts))]
    parts.append(_batch(batch, n, wanted, found))
    grams = np.unique(np.concatenate(parts))
    return NgramIndex(n, grams, found, n_texts, n_words, time.perf_counter() - start)


@dataclass(frozen=True)
class Item:
    """One eval item: its id in the set, the text that is compared (the user's query), and a group
    (an Agent-H case, a BFCL or DB category) for the breakdown."""

    id: str
    text: str
    group: str = ""


@dataclass(frozen=True)
class ItemScore:
    id: str
    group: str
    words: int
    grams: int  # n-grams of the item (1 for a short item: itself)
    hits: int  # of those, found in the training text
    snippet: str  # the longest run of the item's words that the matches cover

    @property
    def share(self) -> float:
        return self.hits / self.grams if self.grams else 0.0

    @property
    def contaminated(self) -> bool:
        return self.hits > 0

    @property
    def short(self) -> bool:
        return 0 < self.words < N


def _snippet(tokens: list[str], covered: np.ndarray) -> str:
    best, run_start, best_at = 0, 0, 0
    for i, c in enumerate([*covered.tolist(), False]):
        if not c:
            if i - run_start > best:
                best, best_at = i - run_start, run_start
            run_start = i + 1
    text = " ".join(tokens[best_at : best_at + min(best, SNIPPET_WORDS)])
    return text + (" ..." if best > SNIPPET_WORDS else "")


def score_item(item: Item, index: NgramIndex) -> ItemScore:
    """How many of the item's n-grams the training text holds (a short item: whether it holds it whole)."""
    tokens = words(item.text)
    if not tokens:
        return ItemScore(item.id, item.group, 0, 0, 0, "")
    if len(tokens) < index.n:
        hit = int(gram_hashes(tokens, len(tokens))[0]) in index.short
        return ItemScore(item.id, item.group, len(tokens), 1, int(hit), " ".join(tokens) if hit else "")
    hits = index.contains(gram_hashes(tokens, index.n))
    covered = np.zeros(len(tokens), dtype=bool)
    for i in np.flatnonzero(hits):
        covered[i : i + index.n] = True
    return ItemScore(item.id, item.group, len(tokens), len(hits), int(hits.sum()), _snippet(tokens, covered))


def scan_set(items: Sequence[Item], index: NgramIndex, decontaminate: bool = False) -> dict[str, Any]:
    """One eval set's part of the report: counts, the share contaminated with its Wilson interval, a
    breakdown by group, the worst items and every contaminated id (what decontamination drops)."""
    scores = [score_item(i, index) for i in items]
    bad = [s for s in scores if s.contaminated]
    groups: dict[str, dict[str, int]] = {}
    for s in scores:
        g = groups.setdefault(s.group, {"n": 0, "contaminated": 0})
        g["n"] += 1
        g["contaminated"] += s.contaminated
    worst = sorted(bad, key=lambda s: (-s.share, -s.hits, s.id))[:WORST]
    dropped = len(bad) if decontaminate else 0
    return {
        "n": len(scores),
        "contaminated": len(bad),
        "share": wilson(len(bad), len(scores)).to_dict(),
        "short_items": sum(s.short for s in scores),
        "short_contaminated": sum(s.short and s.contaminated for s in bad),
        "empty_items": sum(s.words == 0 for s in scores),
        "dropped": dropped,
        "kept": len(scores) - dropped,
        "groups": dict(sorted(groups.items())) if len(groups) > 1 else {},
        "worst": [
            {"id": s.id, "share": round(s.share, 4), "hits": s.hits, "ngrams": s.grams, "snippet": s.snippet}
            for s in worst
        ],
        "contaminated_ids": sorted(s.id for s in bad),
    }


def _cell(iv: dict[str, Any]) -> str:
    if iv.get("value") is None:
        return "-"
    return f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    """The report for people: one row per eval set, the sets that were skipped and why, the worst items."""
    c = report["corpus"]
    lines = [
        "# Contamination: training corpus vs eval sets",
        "",
        f"Rule: an item is contaminated when one of its {report['rule']['n']}-grams of normalised words occurs "
        f"in the training text (an item shorter than {report['rule']['n']} words: when it occurs whole). "
        f"Training text: the user and assistant turns of splits {', '.join(report['rule']['splits'])} "
        f"({c['texts']} texts, {c['words']} words, {c['unique_ngrams']} distinct {report['rule']['n']}-grams; "
        f"index built in {c['seconds']} s; the whole scan {report['seconds']} s). "
        + (
            "Decontaminate: on (eval drops the contaminated items before generating)."
            if report["decontaminate"]
            else "Decontaminate: off (report only)."
        ),
        "",
        "| eval set | run by eval | items | contaminated | share [95% CI] | short items (contaminated) | dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["sets"].items():
        lines.append(
            f"| {name} | {'yes' if s['runs'] else 'no'} | {s['n']} | {s['contaminated']} | {_cell(s['share'])} | "
            f"{s['short_items']} ({s['short_contaminated']}) | {s['dropped']} |"
        )
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {name}: {why}" for name, why in report["skipped"].items()]
    grouped = [(name, s["groups"]) for name, s in report["sets"].items() if s["groups"]]
    if grouped:
        lines += ["", "Contaminated by group:", ""]
    for name, groups in grouped:
        lines.append(
            f"- {name}: " + ", ".join(f"{g} {v['contaminated']}/{v['n']}" for g, v in groups.items())
        )
    worst = [(name, w) for name, s in report["sets"].items() for w in s["worst"]]
    if worst:
        lines += ["", "## Most overlapping items", "", "| set | item | share of its n-grams | matched text |"]
        lines += ["|---|---|---|---|"]
        for name, w in worst:
            snippet = w["snippet"].replace("|", " ")
            lines.append(
                f"| {name} | `{w['id']}` | {w['share']:.2f} ({w['hits']}/{w['ngrams']}) | {snippet} |"
            )
    return "\n".join(lines) + "\n"


def flat_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """``contamination.<set>.share`` (and ``.contaminated``, ``.dropped``) for MLflow, from :func:`summary`."""
    out: dict[str, float] = {}
    for name, s in (summary or {}).get("sets", {}).items():
        if s["share"] is not None:
            out[f"contamination.{name}.share"] = float(s["share"])
        out[f"contamination.{name}.contaminated"] = float(s["contaminated"])
        out[f"contamination.{name}.dropped"] = float(s["dropped"])
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short form the data manifest and the eval report carry: counts per set, skipped sets, cost."""
    return {
        "sets": {
            name: {k: s[k] for k in ("runs", "n", "contaminated", "dropped")} | {"share": s["share"]["value"]}
            for name, s in report["sets"].items()
        },
        "skipped": report["skipped"],
        "corpus": report["corpus"],
        "seconds": report["seconds"],
        "report": report.get("path"),
    }
