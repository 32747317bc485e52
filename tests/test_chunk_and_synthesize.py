from collections import Counter
from datetime import UTC, datetime

import pytest

from qaforge.config import SynthesisConfig, load_config
from qaforge.records import Chunk, ChunkSet
from qaforge.refusal import is_refusal
from qaforge.synthesis import synthesize
from qaforge.synthesis.filters import QuestionIndex, grounding, malformed
from qaforge.synthesis.offline import follow_ups_for_chunk, pairs_for_chunk, sentences, styled
from qaforge.synthesis.split import split_by_document

from helpers import REPO


def test_chunks_carry_provenance_and_fit_the_token_budget(sample_corpus, sample_chunks) -> None:
    chunks = sample_chunks.chunks
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    assert {c.doc_id for c in chunks} == {d.doc_id for d in sample_corpus.documents}
    assert all(c.token_count <= 192 for c in chunks)
    levels = [c for c in chunks if c.source.endswith("levels.html")]
    assert any("Level 2" in " ".join(c.headings) for c in levels)
    docs = {d.doc_id: d for d in sample_corpus.documents}
    for chunk in chunks:
        doc = docs[chunk.doc_id]
        assert (chunk.source, chunk.doc_content_hash, chunk.fetched_at, chunk.converter, chunk.status) == (
            doc.source, doc.content_hash, doc.fetched_at, doc.converter, doc.status
        )


def _chunk(text: str, headings: list[str] | None = None) -> Chunk:
    return Chunk(
        chunk_id="d-0000", doc_id="d", source="s", title="Guide", headings=headings or ["Levels"],
        text=text, token_count=0, doc_content_hash="0" * 64, fetched_at=datetime.now(UTC),
        converter="docling-md",
    )


def test_rules_make_grounded_questions() -> None:
    chunk = _chunk(
        "State of charge (SoC) is the battery's energy level as a share of usable capacity. "
        "Level 2 charging uses a 208 V or 240 V supply.\n"
        "Type 1, Standard = SAE J1772. Type 1, Maximum power = 19.2 kW."
    )
    pairs = {q[0]: (kind, a) for kind, q, a in pairs_for_chunk(chunk, limit=10)}
    assert pairs["What is state of charge?"][0] == "definition"
    assert pairs["What does Level 2 charging use?"][1] == "Level 2 charging uses a 208 V or 240 V supply."
    assert pairs["What is the maximum power for Type 1?"][1] == "For Type 1, the maximum power is 19.2 kW."
    assert all(grounding(a, chunk.text) == 1.0 for _, a in pairs.values())


def test_empty_headings_fall_back_to_the_title() -> None:
    """Reference docs (npm's command pages) convert with empty headings: the generator
    used to crash on them, and would have asked about an empty topic."""
    text = "You should run npm audit before a release.\n1. Install the package.\n2. Run the tests."
    pairs = pairs_for_chunk(_chunk(text, headings=["", " "]), limit=10)
    assert ("procedure", "What are the steps for guide?", "1. Install the package. 2. Run the tests.") in [
        (kind, q[0], a) for kind, q, a in pairs]
    assert not any(kind == "section" for kind, _, _ in pairs), "no heading, no section question"
    assert all(q.strip() and "  " not in q and " ?" not in q for _, qs, _ in pairs for q in qs)


def test_numbered_steps_make_a_procedure_question() -> None:
    chunk = _chunk("1. Find the battery capacity.\n2. Multiply by the change in charge.\n3. Divide by the power.", ["Charging time"])
    assert ("procedure", "What are the steps for charging time?",
            "1. Find the battery capacity. 2. Multiply by the change in charge. 3. Divide by the power.") in [
        (kind, q[0], a) for kind, q, a in pairs_for_chunk(chunk, 10)]


def test_questions_of_a_manual_are_the_ones_its_readers_ask() -> None:
    """Task headings give "How do I ...?" (the verb as the section uses it), problem
    headings "What should I do if ...?" and "Why ...?", and a heading that names a thing
    ("Charging Networks") or a page title never gives "What does the <title> material
    say about ...?"."""
    task = _chunk("Attach the antenna for better reception.\n1. Connect the antenna cable to the ANT IN port.\n"
                  "2. Tighten the connector by hand.", ["Installation", "Connecting an Antenna"])
    stop = _chunk("Check that the batteries are inserted with + and - the right way round, and replace them if "
                  "the indicator does not light when you press a button.", ["Troubleshooting",
                                                                             "The Remote Control Does Not Work"])
    prose = _chunk("Use sleep mode at night: the fan runs at its lowest speed and the display turns off after "
                   "10 seconds.", ["Using Sleep Mode"])
    thing = _chunk("Charging networks are groups of public stations that are managed through one app and one "
                   "account for their drivers.", ["Charging Networks"])
    found = {kind_q: a for chunk in (task, stop, prose, thing)
             for kind, qs, a in pairs_for_chunk(chunk, 10) for kind_q in [(kind, q) for q in qs]}
    assert found[("procedure", "How do I connect an antenna?")].startswith("1. Connect the antenna cable")
    assert ("procedure", "What are the steps to connect an antenna?") in found
    assert found[("troubleshooting", "What should I do if the remote control does not work?")].startswith("Check")
    assert ("troubleshooting", "Why does the remote control not work?") in found
    assert ("task", "How do I use sleep mode?") in found
    assert not any(q.startswith("How do I charge") for _, q in found), "a gerund naming a thing is no task"
    assert not any("material say" in q for _, q in found)


def test_table_questions_follow_the_kind_of_table() -> None:
    """Docling writes a row as "<row>, <column> = <value>.": a specification table is
    asked for its rows ("What is the weight?"), a troubleshooting table's rows are
    problems, a maintenance table's are tasks."""
    chunk = _chunk("Weight, Value = 5.2 kg (11.5 lb). Rated power, Value = 45 W.\n"
                   "The buttons do not respond, Possible cause = The control panel is locked. "
                   "The buttons do not respond, Solution = Hold the Lock button for 3 seconds.\n"
                   "Weak airflow, Solution = Clean the pre-filter.\n"
                   "Replace the HEPA filter, How often = Every 6 to 12 months.", ["Specifications"])
    found = {q: a for _, qs, a in pairs_for_chunk(chunk, 20) for q in qs}
    assert found["What is the weight?"] == "The weight is 5.2 kg (11.5 lb)."
    assert found["What is the rated power?"] == "The rated power is 45 W."
    assert found["What should I do if the buttons do not respond?"] == "Hold the Lock button for 3 seconds."
    assert found["Why do the buttons not respond?"] == "The control panel is locked."
    assert found["What should I do about weak airflow?"] == "Clean the pre-filter."
    assert found["How often should I replace the HEPA filter?"].endswith("6 to 12 months.")
    assert not any(q.startswith(("What is the value", "What is the solution")) for q in found)


def test_a_definition_question_is_answered_by_a_definition() -> None:
    """"What is X?" only where the sentence says what X is: not where it says how X is
    measured, what it is like, or where a clause was taken for the subject."""
    chunk = _chunk("Battery capacity is measured in kilowatt-hours. Full library cards are valid for 3 years. "
                   "Hours are the same every week of the year. Returning items late when you are away is fine. "
                   "Many vehicles are sold with a portable cord set. A charging network is a group of stations. "
                   "Demand charges are fees that depend on peak power.")
    questions = {q[0] for kind, q, _ in pairs_for_chunk(chunk, 20) if kind == "definition"}
    assert questions == {"What is a charging network?", "What are demand charges?"}, questions


def test_a_section_answer_is_its_prose_not_its_navigation() -> None:
    """Converted pages open sections with "From the guide [Parent](parent.html)." and
    link lists: neither is an answer, and a link reads as its text."""
    chunk = _chunk("From the guide\n[EV Charging Levels](levels.html)\n.\nDC fast charging supplies direct current "
                   "straight to the battery and typically delivers 50 kW to 350 kW. See [Connectors](connectors.html) "
                   "for the plugs it uses.", ["DC Fast Charging"])
    chunk = chunk.model_copy(update={"title": "DC Fast Charging - EV Charging Levels"})
    answers = [a for kind, _, a in pairs_for_chunk(chunk, 10) if kind == "section"]
    assert answers == ["DC fast charging supplies direct current straight to the battery and typically delivers "
                       "50 kW to 350 kW. See Connectors for the plugs it uses."]
    links = _chunk("- [Connectors](connectors.html)\n- [Levels](levels.html)\n- [Costs](costs.html)",
                   ["More on this topic"])
    assert pairs_for_chunk(links, 10) == []


def test_follow_up_asks_about_the_defined_term_with_a_pronoun() -> None:
    chunk = _chunk(
        "A smart charger is a networked charger that connects by Wi-Fi. "
        "A smart charger supports scheduled charging at off-peak hours."
    )
    [(question, answer, first)] = follow_ups_for_chunk(chunk)
    assert question == "What does it support?"
    assert answer == "A smart charger supports scheduled charging at off-peak hours."
    assert first.question == "What is a smart charger?"

    chunk = _chunk("Lithium plating is the deposition of lithium metal on the anode. It reduces capacity for good.")
    [(question, answer, first)] = follow_ups_for_chunk(chunk)
    assert (question, answer) == ("What does it reduce?", "It reduces capacity for good.")


@pytest.mark.parametrize(
    ("style", "kind", "answer", "expected"),
    [
        ("brief", "section", "First sentence here. Second one.", "First sentence here."),
        ("markdown", "procedure", "1. Find it. 2. Divide it.", "1. Find it.\n2. Divide it."),
        ("sentence", "section", "First. Second.", "First. Second."),
    ],
)
def test_answer_styles(style: str, kind: str, answer: str, expected: str) -> None:
    assert styled(answer, kind, style) == expected


def test_sample_dataset_has_follow_ups(sample_dataset) -> None:
    follow_ups = [p for s in ("train", "val", "test") for p in getattr(sample_dataset, s) if p.kind == "follow-up"]
    assert follow_ups and all(len(p.history) == 1 for p in follow_ups)


def test_reworded_questions_are_duplicates() -> None:
    index = QuestionIndex(0.85)
    assert not index.seen("What voltage does Level 2 charging use?")
    assert index.seen("Which voltage does level 2 charging use")
    assert not index.seen("What voltage does Level 1 charging use?")


def test_pronoun_and_imperative_sentences_are_skipped() -> None:
    chunk = _chunk("It uses 240 V for most homes. Add a load management device that reduces current.")
    assert [k for k, _, _ in pairs_for_chunk(chunk, 10)] == ["section"]


def test_a_heading_that_is_a_question_is_asked_verbatim() -> None:
    """FAQ pages: the author already wrote the question; it used to become "What does the
    <title> material say about <question>??"."""
    text = "Adult cards can have up to 30 items checked out at once. Junior cards can borrow 10 items."
    pairs = pairs_for_chunk(_chunk(text, headings=["Borrowing - FAQ", "How many items can I borrow at once?"]), 10)
    kind, phrasings, answer = pairs[0]
    assert (kind, phrasings[0], answer) == ("faq", "How many items can I borrow at once?", text)
    assert len(phrasings) > 1 and all(q.endswith("?") and "??" not in q for q in phrasings)
    assert not any("material say about" in q for _, qs, _ in pairs for q in qs)


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Please take your receipt with you when you leave.", None),  # an imperative, not a subject
        ("The Library works 24/7 to protect your personal data.", None),  # "protect" is an infinitive
        ("Level 2 chargers deliver up to 19.2 kW.", "What do Level 2 chargers deliver?"),
    ],
)
def test_fact_rule_needs_a_real_subject(sentence: str, expected: str | None) -> None:
    found = [qs[0] for kind, qs, _ in pairs_for_chunk(_chunk(sentence, headings=[""]), 10) if kind == "fact"]
    assert found == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("question", "problem"),
    [
        ("What do please take?", "a verb or pronoun as the subject"),
        ("What do what authentication strategy to use?", "a question word as the subject"),
        ("What does the Guide material say about How do I log in??", "repeated punctuation"),
        ("What does the guide say about How do I log in? and more?", "a question inside the question"),
        ("What is the the car draws?", "a repeated word"),
        ("What is it?", "a verb or pronoun as the subject"),
        ("Fees", "fewer than three words"),
        ("Tell me about the fees", "no question mark at the end"),
        ("What is meant by returning items late when you?", "a clause cut off"),
        ("What is the power for Level 2, 48 A?", None),
        ("Why is there an unusual smell?", None),
        ("How do I renew my items?", None),
        ("What do I need to bring to sign up?", None),
        ("What do Level 2 chargers deliver?", None),
    ],
)
def test_malformed_questions_are_named(question: str, problem: str | None) -> None:
    assert malformed(question) == problem


def test_memorisation_set_is_reworded_training_questions_whose_answers_are_trained(sample_dataset) -> None:
    """Each question comes in several phrasings; training keeps all but the last, which
    goes to the memorisation set: its answer is a training target word for word, so a
    gain there is recall of a trained answer, and the set is named for that."""
    data = sample_dataset
    trained = {(p.chunk_id, p.answer): set() for p in data.train}
    for p in data.train:
        trained[p.chunk_id, p.answer].add(p.question)
    assert data.memorisation and all(p.phrasing > 0 for p in data.memorisation)
    for p in data.memorisation:
        assert p.question not in trained[p.chunk_id, p.answer], "a held-out phrasing is not trained on"
        assert trained[p.chunk_id, p.answer], "the same answer is trained on, asked in other words"
    assert all(p.phrasing == 0 for p in data.val + data.test)
    assert not any(malformed(p.question) for p in data.train + data.test if not p.history and p.kind != "faq")


def test_knowledge_set_is_never_trained_on_in_wording_or_answer(sample_chunks, sample_dataset) -> None:
    """Facts of training documents held out with every phrasing, and only where no
    training answer contains a sentence of their answer: a model that answers them
    learned the fact (or read it), not a sentence it was trained to repeat. Before, the
    paraphrase set's every answer was a verbatim training target."""
    from qaforge.synthesis import generate_pairs

    data = sample_dataset
    assert len(data.knowledge) >= 8 and len({p.doc_id for p in data.knowledge}) >= 6
    train_docs = {p.doc_id for p in data.train}
    assert all(p.doc_id in train_docs for p in data.knowledge), "about documents the model trained on"
    trained_answers = [p.answer for p in data.train]
    trained_questions = {p.question for p in data.train}
    every_phrasing = {}
    for pair in generate_pairs(sample_chunks, load_config(REPO / "configs" / "default.yaml").synthesis)[0]:
        every_phrasing.setdefault((pair.chunk_id, pair.answer), set()).add(pair.question)
    for p in data.knowledge:
        assert not every_phrasing[p.chunk_id, p.answer] & trained_questions, "no phrasing of it is trained on"
        for sentence in sentences(p.answer):
            if len(sentence.split()) >= 3:
                assert not any(sentence in answer for answer in trained_answers), sentence
    held = {(p.chunk_id, p.answer) for p in data.knowledge}
    assert not any((p.chunk_id, p.answer) in held for p in data.memorisation)


def test_sentences_rejoin_pdf_line_breaks() -> None:
    assert sentences("A 32 A charger needs a 40 A\nbreaker. Mount it.") == [
        "A 32 A charger needs a 40 A breaker.",
        "Mount it.",
    ]


def test_grounding_counts_content_tokens() -> None:
    assert grounding("The breaker is 40 A.", "a 40 A breaker") == 1.0
    assert grounding("The breaker is 50 A.", "a 40 A breaker") == 0.5


def test_sample_pairs_are_grounded_and_split_by_document(sample_chunks, sample_dataset) -> None:
    data = sample_dataset
    splits = {"train": data.train, "val": data.val, "test": data.test}
    assert all(splits.values())
    chunk_text = {c.chunk_id: c.text for c in sample_chunks.chunks}
    for pair in data.train + data.val + data.test:
        if pair.unanswerable:  # the default config's out-of-scope questions have no source
            assert pair.source == "(unanswerable)" and pair.chunk_id == ""
            continue
        assert pair.grounding >= SynthesisConfig().min_grounding
        assert abs(grounding(pair.answer, chunk_text[pair.chunk_id]) - pair.grounding) < 1e-3
    docs = {name: {p.doc_id for p in pairs} for name, pairs in splits.items()}
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["val"]
    assert not docs["val"] & docs["test"]
    questions = sum(p.phrasing == 0 for ps in splits.values() for p in ps)  # rephrasings are extra
    assert 0.1 < len(data.test) / questions < 0.35
    conversations = {(*(t.question for t in p.history), p.question.lower())
                     for ps in splits.values() for p in ps if p.phrasing == 0}
    assert len(conversations) == questions
    assert Counter(p.kind for p in data.train).keys() >= {"definition", "fact", "table", "section"}


def test_split_is_seeded(sample_dataset) -> None:
    pairs = sample_dataset.train + sample_dataset.val + sample_dataset.test
    first = split_by_document(pairs, SynthesisConfig(seed=1))
    assert split_by_document(pairs, SynthesisConfig(seed=1)) == first
    assert split_by_document(pairs, SynthesisConfig(seed=2)) != first


def test_too_little_data_is_explained() -> None:
    with pytest.raises(RuntimeError, match="too little data to split by document"):
        synthesize(ChunkSet(chunks=[_chunk("Level 2 charging uses a 240 V supply in homes.")]), SynthesisConfig())


def test_unanswerable_questions_are_spread_over_the_splits(sample_chunks) -> None:
    questions = [f"Who won the {year} football world cup?" for year in range(1990, 2030, 2)]
    data = synthesize(sample_chunks, SynthesisConfig(unanswerable=questions))
    slices = {s: [p for p in getattr(data, s) if p.unanswerable] for s in ("train", "val", "test")}
    assert sum(map(len, slices.values())) == len(questions)
    assert slices["test"] and slices["train"], "taught in train, measured in test"
    assert all(p.answer == SynthesisConfig().unanswerable_answer for ps in slices.values() for p in ps)


def splits_of(pairs, cfg: SynthesisConfig) -> dict[str, str]:
    return {p.doc_id: name for name, ps in zip(("train", "val", "test"), split_by_document(pairs, cfg)) for p in ps}


def test_adding_or_removing_documents_moves_no_other_document(sample_dataset) -> None:
    """Else a model trained on an earlier run's train split could be tested on the same
    documents now, and the gate would be biased against the candidate."""
    cfg = SynthesisConfig()
    pairs = sample_dataset.train + sample_dataset.val + sample_dataset.test
    before = splits_of(pairs, cfg)
    added = [p.model_copy(update={"doc_id": f"new-{i % 7}"}) for i, p in enumerate(pairs[:60])]
    after = splits_of(pairs + added, cfg)
    assert {d: s for d, s in after.items() if d in before} == before
    dropped = sorted(before)[0]
    assert splits_of([p for p in pairs if p.doc_id != dropped], cfg) == {d: s for d, s in before.items() if d != dropped}


@pytest.mark.parametrize(
    "answer",
    [
        "I don't know.",
        "I cannot answer that from the manual.",
        "The manual does not cover winter tyres.",
        "That is not mentioned in the documents.",
        "This is not provided in the text.",
        "There is no information about that.",
        SynthesisConfig().unanswerable_answer,
    ],
)
def test_synthesis_and_evaluation_share_one_definition_of_a_refusal(answer: str) -> None:
    """Synthesis drops generated refusals and evaluation counts refusals with the same
    rule: before, each had its own and they disagreed on most of these."""
    import qaforge.evaluation.run as evaluation
    import qaforge.synthesis as synthesis

    assert synthesis.is_refusal is evaluation.is_refusal is is_refusal
    assert is_refusal(answer)
    assert not is_refusal("Level 2 charging uses a 240 V supply and delivers up to 19.2 kW.")
