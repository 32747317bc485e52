"""The offline QA generator: no model, no network. It turns headings that are
questions (FAQ pages), definitions, subject-verb facts, advice, table cells, numbered
procedures and section openings of a chunk into questions whose answers are sentences
taken from (or built from) the chunk itself, plus two-turn follow-ups about a
just-defined term. Each question comes in several phrasings, so a model learns the
fact rather than one sentence, and one phrasing can be held out to test that. The
rules are about English grammar only: no word of any domain is in them."""

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
        "use deliver need require provide support take add reduce increase cost allow "
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
    "multiply mount run charge please".split()
)
# Words that cannot be inside a subject noun phrase before its verb: they mean the
# matched "verb" is an infinitive ("works to protect") or follows an auxiliary.
NOT_IN_SUBJECT = frozenset("to is are was were be been can could will would may might must shall should has have "
                           "had not do does did".split())

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


Phrasings = tuple[str, ...]  # the question as first written, then rephrasings


def _definition(sentence: str) -> tuple[Phrasings, str] | None:
    match = _DEFINITION.match(sentence)
    if not match or match["term"].split()[0].lower() in NOT_SUBJECTS:
        return None
    verb = "are" if match["verb"] == "are" else "is"
    term = _lower_first(match["term"])
    return (f"What {verb} {term}?", f"What is meant by {term}?", f"Can you explain what {term} {verb}?"), sentence


def _fact_parts(sentence: str) -> tuple[str, str, str, str] | None:
    """(subject, auxiliary, base verb, verb as written) of a subject-verb fact sentence."""
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
            or NOT_IN_SUBJECT & {w.lower() for w in words[:i]}
        ):
            return None
        return subject, "does" if word != base else "do", base, word
    return None


def _fact(sentence: str) -> tuple[Phrasings, str] | None:
    if parts := _fact_parts(sentence):
        subject, auxiliary, base, verb = parts
        subject = _lower_first(subject)
        return (f"What {auxiliary} {subject} {base}?", f"Do you know what {subject} {verb}?",
                f"Can you tell me what {subject} {verb}?"), sentence
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
            previous = Turn(question=pair[0][0], answer=pair[1])
            defined[_without_article(_DEFINITION.match(sentence)["term"])] = previous
            continue
        if previous and len(words) > 3 and words[0] in ("It", "They") and words[1] in FACT_VERBS:
            auxiliary = "does" if words[0] == "It" else "do"
            found.append((f"What {auxiliary} {words[0].lower()} {FACT_VERBS[words[1]]}?", sentence, previous))
        elif (parts := _fact_parts(sentence)) and (first := defined.get(_without_article(parts[0]))):
            _, auxiliary, base, _ = parts
            pronoun = "it" if auxiliary == "does" else "they"
            found.append((f"What {auxiliary} {pronoun} {base}?", sentence, first))
        previous = None
    return found


def _advice(sentence: str, topic: str) -> tuple[Phrasings, str] | None:
    match = _ADVICE.match(sentence)
    if not match or match["subject"].split()[0].lower() in NOT_SUBJECTS:
        return None
    topic, subject, modal = _lower_first(topic), _lower_first(match["subject"]), match["modal"]
    return (f"When it comes to {topic}, what {modal} {subject} do?", f"What {modal} {subject} do about {topic}?",
            f"What is the advice for {subject} on {topic}?"), sentence


# Rephrasings of common question openings, for questions written by people (FAQ headings).
_REPHRASINGS = [
    (re.compile(r"^Can I (.+)\?$"), ("Is it possible for me to {0}?", "Am I able to {0}?")),
    (re.compile(r"^How do I (.+)\?$"), ("How can I {0}?", "What is the way to {0}?")),
    (re.compile(r"^How can I (.+)\?$"), ("How do I {0}?", "What is the way to {0}?")),
    (re.compile(r"^What is (.+)\?$"), ("What is meant by {0}?", "Can you tell me what {0} is?")),
    (re.compile(r"^Do I need (.+)\?$"), ("Is {0} required?", "Do I have to have {0}?")),
    (re.compile(r"^Is there (.+)\?$"), ("Does {0} exist?",)),
    (re.compile(r"^(How (?:much|many|long|often)) (.+)\?$"), ("Roughly {0} {1}?",)),
    (re.compile(r"^(What|Where|When|Who|Which|Why|How) (.+)\?$"), ("Do you know {0} {1}?",)),
]


def _heading_question(heading: str, title: str) -> Phrasings:
    """A heading that is itself a question, verbatim, then rephrasings of it."""
    for pattern, templates in _REPHRASINGS:
        if match := pattern.match(heading):
            groups = [g[0].lower() + g[1:] if i == 0 and g.split()[0] in ("How", "What", "Where", "When", "Who",
                                                                               "Which", "Why") else g
                      for i, g in enumerate(match.groups())]
            return (heading, *(t.format(*groups) for t in templates))
    return (heading, f"{title}: {heading}")


def _table_cells(text: str) -> Iterator[tuple[Phrasings, str]]:
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
            column = _lower_first(column)
            yield (
                (f"What is the {column} for {key}?", f"For {key}, what is the {column}?",
                 f"Which {column} applies to {key}?"),
                f"For {key}, the {column} is {value}.",
            )


def pairs_for_chunk(chunk: Chunk, limit: int) -> list[tuple[str, Phrasings, str]]:
    """Candidate (kind, phrasings, answer) triples for one chunk, most specific first."""
    # Converted documents can carry empty headings (e.g. a Markdown heading that is only markup).
    heading = next((h.strip().strip("*#").strip() for h in reversed(chunk.headings) if h.strip()), "")
    title = chunk.title.strip()
    topic = heading or title
    found: list[tuple[str, Phrasings, str]] = []
    opening = " ".join(sentences(chunk.text)[:2])
    if heading.endswith("?") and len(opening.split()) >= 4:
        # An FAQ: its author already wrote the question; the answer is what follows it.
        found.append(("faq", _heading_question(heading, title), opening))
    found += [("table", q, a) for q, a in _table_cells(chunk.text)]
    for sentence in sentences(chunk.text):
        if "=" in sentence or not 5 <= len(sentence.split()) <= 60:
            continue
        for kind, rule in (
            ("definition", _definition),
            ("fact", _fact),
            *([("advice", lambda s: _advice(s, topic))] if topic and not topic.endswith("?") else []),
        ):
            if pair := rule(sentence):
                found.append((kind, *pair))
                break
    steps = [ln.strip() for ln in chunk.text.splitlines() if _STEP.match(ln.strip())]
    if len(steps) >= 2 and topic:
        if topic.endswith("?"):
            found.append(("procedure", (topic,), " ".join(steps)))
        else:
            t = _lower_first(topic)
            found.append(("procedure", (f"What are the steps for {t}?", f"How do I go about {t}?",
                                        f"What is the procedure for {t}?"), " ".join(steps)))
    if heading and not heading.endswith("?") and 8 <= len(opening.split()) <= 80:
        about = (f"What should I know about {_lower_first(topic)}?", f"Can you summarize {_lower_first(topic)}?")
        # A page's own title heading names the page; only a section heading needs the page named too.
        own = heading.lower() in title.lower()
        found.append(("section", about if own else (f"What does the {title} material say about {topic}?", *about),
                      opening))
    return found[:limit]


def styled(answer: str, kind: str, style: str) -> str:
    """An offline answer in the configured style."""
    if style == "brief":
        return sentences(answer)[0] if sentences(answer) else answer
    if style == "markdown" and kind == "procedure":
        return "\n".join(_STEP_SPLIT.split(answer))
    return answer
