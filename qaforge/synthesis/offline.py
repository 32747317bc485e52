"""The offline QA generator: no model, no network. It turns headings that are
questions (FAQ pages), task headings ("Connecting an Antenna" -> "How do I connect an
antenna?"), problem headings ("The fan is louder than usual" -> "What should I do if
...?", "Why ...?"), definitions, subject-verb facts, advice, table cells (asked by the
kind of table: specifications, troubleshooting, legends, schedules), numbered
procedures and section openings of a chunk into questions whose answers are sentences
taken from (or built from) the chunk itself, plus two-turn follow-ups about a
just-defined term. Each question comes in several phrasings, so a model learns the
fact rather than one sentence. The rules are about English grammar (verb forms from
lemminflect) and the words documents use for their own parts ("troubleshooting",
"solution"): no word of any domain is in them."""

from __future__ import annotations

import re
from collections.abc import Iterator

from lemminflect import getLemma

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
    "multiply mount run charge please clean wipe wash update "
    "in on at for with from by after before during under over".split()
)
# Words that cannot be inside a subject noun phrase before its verb: they mean the
# matched "verb" is an infinitive ("works to protect") or follows an auxiliary.
NOT_IN_SUBJECT = frozenset("to is are was were be been can could will would may might must shall should has have "
                           "had not do does did".split())

_DEFINITION = re.compile(
    r"^(?:(?:An?|The) )?(?P<term>[A-Z0-9][^,;:()]{1,60}?)(?: \([^)]{1,30}\))? "
    r"(?P<verb>is|are|refers to|means) (?P<rest>.{10,})$"
)
# Words that make a "term" a clause or a quantity rather than a name ("Returning items
# when you", "Many vehicles", "Your card").
NOT_A_TERM = frozenset("when if while because you your we our they their i my he she his her it its many all "
                       "some most several each every both any few".split())
# Superlatives and comparisons after the copula rank or compare; they do not define.
_NOT_CLASSIFYING = re.compile(r"^the (?:same|only|first|last|most|least|\w+est)\b", re.IGNORECASE)
_ADVICE = re.compile(r"^(?P<subject>[A-Z][^,;:]{2,50}?) (?P<modal>should|must) (?P<rest>.{10,})$")
# Docling serializes a table row as "Row key, Column = value. Row key, Column = value."
_TABLE_CELL_BREAK = re.compile(r"\. (?=[^=]{1,80}? = )")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def _unlinked(text: str) -> str:
    """Markdown links read as their text."""
    return _LINK.sub(r"\1", text)


_STEP = re.compile(r"^\d{1,2}[.)] \S")
_STEP_SPLIT = re.compile(r" (?=\d{1,2}[.)] )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_tokens(text: str) -> list[str]:
    return [t for t in words(text) if t not in STOPWORDS]


def sentences(text: str) -> list[str]:
    """Sentences of a chunk; lines broken mid-sentence (as in PDFs) are rejoined, a
    Markdown link reads as its text, and a line that is only links (navigation, "From
    the guide [...]") is no sentence."""
    paragraphs: list[str] = []
    for raw in (ln.strip() for ln in text.splitlines()):
        line = _unlinked(raw).replace("**", "")
        # A short line without a full stop is a label ("From the guide"), not a sentence.
        if not line or not _LINK.sub("", raw).strip(" -*•.,:;|") or (
                len(line.split()) < 5 and not line.endswith((".", "!", "?"))):
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


def _defines(match: re.Match[str]) -> bool:
    """Whether "<term> is/are <rest>" defines the term, rather than saying something
    else about it ("Battery capacity is measured in kWh", "Full cards are valid for 3
    years", "Hours are the same every week"): the term is a noun phrase of its own, and
    the rest classifies it, with an article (singular) or a noun and a relative clause
    (plural); "refers to" and "means" always define."""
    term = match["term"].lower().split()
    if term[0] in NOT_SUBJECTS or term[0] in NOT_A_TERM or NOT_A_TERM & set(term[1:]):
        return False
    if match["verb"] in ("refers to", "means"):
        return True
    rest = match["rest"].lower().split()
    if _NOT_CLASSIFYING.match(match["rest"]):
        return False
    if rest[0] in ("a", "an", "the", "one"):
        return True
    return match["verb"] == "are" and bool({"that", "which", "who", "where", "used"} & set(rest[1:3]))


def _definition(sentence: str) -> tuple[Phrasings, str] | None:
    match = _DEFINITION.match(sentence)
    return _defining(match) if match else None


def _defining(match: re.Match[str]) -> tuple[Phrasings, str] | None:
    """The phrasings and answer of a sentence `_DEFINITION` matched, if it defines its term."""
    sentence = match.string
    if not _defines(match):
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
            # "The front cover has": a verb in its base form follows a plural subject;
            # otherwise the "verb" is a noun of the subject ("cover", "control").
            or (word == base and not words[i - 1].endswith("s"))
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
        if (match := _DEFINITION.match(sentence)) and (pair := _defining(match)) is not None:
            previous = Turn(question=pair[0][0], answer=pair[1])
            defined[_without_article(match["term"])] = previous
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
            yield _table_question(key, _lower_first(column), value)


# Column headers that say "the value of the row", so the row's key is what is asked for
# (a specification table: "Weight | 5.2 kg"); and those that say what a row's thing does.
_VALUE_COLUMNS = frozenset("value values specification specifications spec details detail data rating setting "
                           "description information".split())
_WHEN_COLUMNS = frozenset(("how often", "interval", "frequency", "when"))
_REMEDY_COLUMNS = re.compile(r"^(?:solution|remedy|fix|action|what to do)", re.IGNORECASE)
_CAUSE_COLUMNS = re.compile(r"^(?:(?:possible |likely |probable )?causes?|reason)", re.IGNORECASE)


def _table_question(key: str, column: str, value: str) -> tuple[Phrasings, str]:
    """The question a reader asks of a table cell, by the kind of table: a specification
    ("What is the weight?"), a troubleshooting table whose rows are problems ("What
    should I do if the buttons do not respond?"), a legend ("What does X mean?"), or any
    other ("What is the <column> for <row>?")."""
    name = _lower_first(_title_words(key)) if key.split()[0][1:].islower() else key
    if column.lower() in _VALUE_COLUMNS:
        return (f"What is the {name}?", f"What is its {name}?", f"Can you tell me the {name}?"), \
            f"The {name} is {value}."
    if _REMEDY_COLUMNS.match(column) or _CAUSE_COLUMNS.match(column):
        # A troubleshooting table: its rows are problems, as clauses or as names ("Weak airflow").
        problem = _lower_first(_title_words(key))
        symptom = _symptom(key, troubleshooting=True) or (
            f"What should I do about {problem}?", f"What causes {problem}?", f"How do I fix {problem}?")
        return ((symptom[0], symptom[2]) if _REMEDY_COLUMNS.match(column) else (symptom[1],)), f"{value}."
    if column.lower() in _WHEN_COLUMNS and key.split()[0].lower() in NOT_SUBJECTS:
        return (f"How often should I {_lower_first(key)}?", f"When should I {_lower_first(key)}?"), \
            f"{key}: {_lower_first(value)}."
    if column.lower() == "meaning":
        return (f"What does {key} mean?", f"What is the meaning of {key}?"), f"{key} means: {value}."
    if column.lower() in ("function", "purpose", "use"):
        return (f"What does {key} do?", f"What is {key} for?"), f"{key}: {value}."
    return ((f"What is the {column} for {key}?", f"For {key}, what is the {column}?",
             f"Which {column} applies to {key}?"), f"For {key}, the {column} is {value}.")


def _is_prose(text: str) -> bool:
    """Sentences a section opens with, not a table row, a step or a label."""
    return 8 <= len(text.split()) <= 80 and " = " not in text and "|" not in text and not _STEP.match(text)


def _title_words(phrase: str) -> str:
    """A title-cased heading's words in running text: "the Purifier On" -> "the purifier
    on", while "Wi-Fi", "HEPA" and "AP-400" keep their capitals."""
    return " ".join(w.lower() if w[:1].isupper() and w[1:].islower() else w for w in phrase.split())


_TASK_HEADING = re.compile(r"^(?:How to |To )(?P<task>[a-z].+)$", re.IGNORECASE)
_TASK_OBJECT_START = frozenset("the a an your to with up on off for from into".split())


def _base_verb(word: str) -> str | None:
    """A verb's base form ("connecting" -> "connect", "turns" -> "turn"), or None when
    the word is no form of a verb lemminflect knows."""
    lemmas = getLemma(word.lower(), upos="VERB", lemmatize_oov=False)
    return lemmas[0] if lemmas else None


def _task(heading: str, section: str) -> str | None:
    """The task a heading names, as a verb phrase: "Connecting an Antenna" -> "connect an
    antenna", "How to reset the filter" -> "reset the filter"."""
    heading = heading.rstrip(".:")
    if match := _TASK_HEADING.match(heading):
        return _title_words(match["task"])
    first, _, rest = heading.partition(" ")
    if not (first.endswith("ing") and first[0].isupper() and first[1:].islower() and rest):
        return None
    base = _base_verb(first)
    # "Charging Networks" names a thing: a task's verb takes an object or a particle,
    # or the section tells the reader to do it ("Use sleep mode at night.").
    if base is None or not (rest.split()[0].lower() in _TASK_OBJECT_START or re.search(
            rf"(?:^|[.!?:]\s+|^\d{{1,2}}[.)] ){base}\b", section, re.IGNORECASE | re.MULTILINE)):
        return None
    return f"{base} {_title_words(rest)}"


def _how_to(task: str) -> Phrasings:
    return f"How do I {task}?", f"How can I {task}?", f"What are the steps to {task}?"


# A heading that states a problem: "The purifier does not turn on", "The app cannot find
# the device", "When the charger won't start", "The filter light stays red".
_SYMPTOM = re.compile(
    r"^(?:[Ww]hen |[Ii]f )?(?P<subject>(?:(?:The|A|An|My|Your|This) )?[A-Za-z0-9][\w/ -]{0,40}?) "
    r"(?P<verb>does not|doesn't|do not|don't|will not|won't|cannot|can't|is not|isn't|are not|aren't|keeps|stays|"
    r"stops|fails to) (?P<rest>[a-z].{1,60})$"
)
# Without a negation, a heading states a problem only as a clause about a named thing:
# "The fan is louder than usual", "The purifier turns off by itself", "There is a smell".
_STATED = re.compile(r"^(?P<subject>(?:[Tt]he|[Mm]y|[Yy]our) [a-z][\w -]{0,30}?|[Tt]here) (?P<verb>is|are|[a-z]{3,}s) "
                     r"(?P<rest>[a-zA-Z0-9].{1,60})$")
_WHY = {"does not": "Why does {s} not {r}?", "doesn't": "Why doesn't {s} {r}?", "do not": "Why do {s} not {r}?",
        "don't": "Why don't {s} {r}?", "will not": "Why won't {s} {r}?", "won't": "Why won't {s} {r}?",
        "cannot": "Why can't {s} {r}?", "can't": "Why can't {s} {r}?", "is not": "Why is {s} not {r}?",
        "isn't": "Why isn't {s} {r}?", "are not": "Why are {s} not {r}?", "aren't": "Why aren't {s} {r}?",
        "keeps": "Why does {s} keep {r}?", "stays": "Why does {s} stay {r}?", "stops": "Why does {s} stop {r}?",
        "fails to": "Why does {s} fail to {r}?", "is": "Why is {s} {r}?", "are": "Why are {s} {r}?"}
_TROUBLE = re.compile(r"troubleshoot|problem|issue|fault|error|fix", re.IGNORECASE)
_WH_WORDS = frozenset("what which who when where why how".split())


def _symptom(heading: str, troubleshooting: bool) -> Phrasings | None:
    """"What should I do if ...?" and "Why ...?" for a heading that states a problem: a
    negated one anywhere, a plain statement only in a troubleshooting part, where "The
    fan is louder than usual" is one."""
    heading = _title_words(heading.rstrip(".!"))
    match = _SYMPTOM.match(heading) or (troubleshooting and _STATED.match(heading))
    if not match:
        return None
    subject_words = match["subject"].lower().split()
    if subject_words[0] in _WH_WORDS or subject_words[-1] in _WH_WORDS | {"s"}:
        return None
    subject, verb, rest = _lower_first(match["subject"]), match["verb"], match["rest"]
    problem = f"{subject} {verb} {rest}"
    if subject == "there":
        why = f"Why {verb} there {rest}?"
    elif verb in _WHY:
        why = _WHY[verb].format(s=subject, r=rest)
    elif base := _base_verb(verb):  # "turns off": a verb in the third person
        why = f"Why does {subject} {base} {rest}?"
    else:
        return None
    return f"What should I do if {problem}?", why, f"How do I fix it when {problem}?"


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
    text = _unlinked(chunk.text)
    steps = [ln.strip() for ln in text.splitlines() if _STEP.match(ln.strip())]
    # A heading that is not a question may name a task, state a problem, or name a topic.
    statement = bool(heading) and not heading.endswith("?")
    task = _task(heading, text) if statement else None
    in_troubleshooting = bool(_TROUBLE.search(" ".join([title, *chunk.headings[:-1]])))
    symptom = _symptom(heading, in_troubleshooting) if statement and not task else None
    # A numbered list of contents is no procedure: steps are sentences.
    if len(steps) >= 2 and topic and sum(st.endswith((".", "!", ")")) for st in steps) * 2 >= len(steps):
        if topic.endswith("?"):
            found.append(("procedure", (topic,), " ".join(steps)))
        elif symptom:
            found.append(("troubleshooting", symptom, " ".join(steps)))
        elif task:
            found.append(("procedure", _how_to(task), " ".join(steps)))
        else:
            t = _lower_first(_title_words(topic))
            found.append(("procedure", (f"What are the steps for {t}?", f"What is the procedure for {t}?"),
                          " ".join(steps)))
    elif task and _is_prose(opening):
        found.append(("task", _how_to(task), opening))
    elif symptom and _is_prose(opening):
        found.append(("troubleshooting", symptom, opening))
    if statement and _is_prose(opening) and not task and not symptom:
        about = _lower_first(_title_words(topic))
        found.append(("section", (f"What should I know about {about}?", f"Can you summarize {about}?"), opening))
    return found[:limit]


def styled(answer: str, kind: str, style: str) -> str:
    """An offline answer in the configured style."""
    if style == "brief":
        return sentences(answer)[0] if sentences(answer) else answer
    if style == "markdown" and kind == "procedure":
        return "\n".join(_STEP_SPLIT.split(answer))
    return answer
