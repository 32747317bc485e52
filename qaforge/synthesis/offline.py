"""The offline QA generator: no model, no network. It turns definitions,
subject-verb facts, advice, table cells, numbered procedures and section openings of
a chunk into questions whose answers are sentences taken from (or built from) the
chunk itself, plus two-turn follow-ups about a just-defined term."""

from __future__ import annotations

import re
from collections.abc import Iterator

from qaforge.records import Chunk, Turn

STOPWORDS = frozenset(
    "a an the of to in on for and or is are be by with at as it its this that these those from "
    "into than then can should must may do does what which who how when where why about".split()
)
# Verbs that reliably end a subject noun phrase in expository text: (3rd-person form, base form).
FACT_VERBS = {
    v: b
    for b in (
        "use deliver need require provide support take add reduce increase cost allow let "
        "connect carry include offer draw limit protect prevent measure define specify cover "
        "give store send control reach"
    ).split()
    for v in (b, b + "es" if b.endswith(("s", "sh", "ch", "x", "z")) else b + "s")
}
# Sentence openers that cannot start a subject noun phrase (pronouns, imperatives).
NOT_SUBJECTS = frozenset(
    "it this that these they those there he she you we if when while because although "
    "add use check make keep avoid plug set turn ask install choose follow do never always "
    "contact try confirm ensure verify move wait park unplug select note remember consider "
    "look call open close start stop remove replace reset press tap read see find divide "
    "multiply mount run charge".split()
)

_DEFINITION = re.compile(
    r"^(?:(?:An?|The) )?(?P<term>[A-Z0-9][^,;:()]{1,60}?)(?: \([^)]{1,30}\))? "
    r"(?P<verb>is|are|refers to|means) (?P<rest>.{10,})$"
)
_ADVICE = re.compile(r"^(?P<subject>[A-Z][^,;:]{2,50}?) (?P<modal>should|must) (?P<rest>.{10,})$")
# Docling serializes a table row as "Row key, Column = value. Row key, Column = value."
_TABLE_CELL_BREAK = re.compile(r"\. (?=[^=]{1,80}? = )")
_STEP = re.compile(r"^\d{1,2}[.)] \S")
_STEP_SPLIT = re.compile(r" (?=\d{1,2}[.)] )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_tokens(text: str) -> list[str]:
    return [t for t in words(text) if t not in STOPWORDS]


def sentences(text: str) -> list[str]:
    """Sentences of a chunk; lines broken mid-sentence (as in PDFs) are rejoined."""
    paragraphs: list[str] = []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        if paragraphs and not paragraphs[-1].endswith((".", "!", "?", ":")) and line[0].islower():
            paragraphs[-1] += " " + line
        else:
            paragraphs.append(line.lstrip("-*• ").strip())
    return [s.strip() for p in paragraphs for s in _SENTENCE_END.split(p) if s.strip()]


def _lower_first(phrase: str) -> str:
    """Lower-case a sentence-initial capital, but not in acronyms or names such as
    'CCS2', 'Level 2' or 'Open Charge Point Protocol'."""
    words = phrase.split()
    first, second = words[0], words[1] if len(words) > 1 else ""
    if (
        (len(first) > 1 and first[1].isupper())
        or any(c.isdigit() for c in first)
        or second[:1].isdigit()
        or second[:1].isupper()
    ):
        return phrase
    return phrase[0].lower() + phrase[1:]


def _definition(sentence: str) -> tuple[str, str] | None:
    match = _DEFINITION.match(sentence)
    if not match or match["term"].split()[0].lower() in NOT_SUBJECTS:
        return None
    verb = "are" if match["verb"] == "are" else "is"
    return f"What {verb} {_lower_first(match['term'])}?", sentence


def _fact_parts(sentence: str) -> tuple[str, str, str] | None:
    """(subject, auxiliary, base verb) of a subject-verb fact sentence."""
    words = sentence.rstrip(".").split()
    for i, word in enumerate(words[1:8], start=1):
        base = FACT_VERBS.get(word)
        if base is None:
            continue
        subject = " ".join(words[:i])
        if (
            words[0].lower() in NOT_SUBJECTS
            or not subject[0].isupper()
            or "," in subject
            or {"that", "which", "who"} & set(words[:i])
        ):
            return None
        return subject, "does" if word != base else "do", base
    return None


def _fact(sentence: str) -> tuple[str, str] | None:
    if parts := _fact_parts(sentence):
        subject, auxiliary, base = parts
        return f"What {auxiliary} {_lower_first(subject)} {base}?", sentence
    return None


def _without_article(phrase: str) -> str:
    return re.sub(r"^(an?|the) ", "", phrase.lower())


def follow_ups_for_chunk(chunk: Chunk) -> list[tuple[str, str, Turn]]:
    """Multi-turn pairs: after "What is X?", a later fact about X (named again, or
    as "It"/"They" right after the definition) asked with a pronoun."""
    defined: dict[str, Turn] = {}
    previous: Turn | None = None
    found: list[tuple[str, str, Turn]] = []
    for sentence in sentences(chunk.text):
        words = sentence.split()
        if (pair := _definition(sentence)) is not None:
            previous = Turn(question=pair[0], answer=pair[1])
            defined[_without_article(_DEFINITION.match(sentence)["term"])] = previous
            continue
        if previous and len(words) > 3 and words[0] in ("It", "They") and words[1] in FACT_VERBS:
            auxiliary = "does" if words[0] == "It" else "do"
            found.append((f"What {auxiliary} {words[0].lower()} {FACT_VERBS[words[1]]}?", sentence, previous))
        elif (parts := _fact_parts(sentence)) and (first := defined.get(_without_article(parts[0]))):
            _, auxiliary, base = parts
            pronoun = "it" if auxiliary == "does" else "they"
            found.append((f"What {auxiliary} {pronoun} {base}?", sentence, first))
        previous = None
    return found


def _advice(sentence: str, topic: str) -> tuple[str, str] | None:
    match = _ADVICE.match(sentence)
    if not match or match["subject"].split()[0].lower() in NOT_SUBJECTS:
        return None
    return f"When it comes to {_lower_first(topic)}, what {match['modal']} {_lower_first(match['subject'])} do?", sentence


def _table_cells(text: str) -> Iterator[tuple[str, str]]:
    """(question, answer) per table cell; cells cut off at a chunk edge are skipped."""
    for line in text.splitlines():
        line = line.replace("**", "").strip(" |")
        if " = " not in line:
            continue
        for cell in _TABLE_CELL_BREAK.split(line):
            head, _, value = cell.partition(" = ")
            key, _, column = head.rpartition(", ")
            value = value.strip().rstrip(".")
            if (
                not (key and column and value)
                or not key[0].isupper()
                or ":" in key
                or "=" in value
                or len(column.split()) > 6
            ):
                continue
            yield (
                f"What is the {_lower_first(column)} for {key}?",
                f"For {key}, the {_lower_first(column)} is {value}.",
            )


def pairs_for_chunk(chunk: Chunk, limit: int) -> list[tuple[str, str, str]]:
    """Candidate (kind, question, answer) triples for one chunk, most specific first."""
    # Converted documents can carry empty headings (e.g. a Markdown heading that is only markup).
    heading = next((h.strip() for h in reversed(chunk.headings) if h.strip()), "")
    topic = heading or chunk.title.strip()
    found = [("table", q, a) for q, a in _table_cells(chunk.text)]
    for sentence in sentences(chunk.text):
        if "=" in sentence or not 5 <= len(sentence.split()) <= 60:
            continue
        for kind, rule in (
            ("definition", _definition),
            ("fact", _fact),
            *([("advice", lambda s: _advice(s, topic))] if topic else []),
        ):
            if pair := rule(sentence):
                found.append((kind, *pair))
                break
    steps = [ln.strip() for ln in chunk.text.splitlines() if _STEP.match(ln.strip())]
    if len(steps) >= 2 and topic:
        found.append(("procedure", f"What are the steps for {_lower_first(topic)}?", " ".join(steps)))
    opening = " ".join(sentences(chunk.text)[:2])
    if heading and 8 <= len(opening.split()) <= 80:
        found.append(("section", f"What does the {chunk.title} material say about {topic}?", opening))
    return found[:limit]


def styled(answer: str, kind: str, style: str) -> str:
    """An offline answer in the configured style."""
    if style == "brief":
        return sentences(answer)[0] if sentences(answer) else answer
    if style == "markdown" and kind == "procedure":
        return "\n".join(_STEP_SPLIT.split(answer))
    return answer
