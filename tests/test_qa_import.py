"""Question-answer data a team already has (`sources.qa`): each shape read into pairs,
every bad line named by file, line and field, and the pairs split by their group and
mixed with the synthesized ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from qaforge.config import QAFormat, QASource, SourcesConfig, SynthesisConfig
from qaforge.ingest import fingerprint
from qaforge.records import Turn
from qaforge.sources.qa_files import IMPORTED, QAFileError, qa_format, read_qa_file
from qaforge.synthesis import synthesize
from qaforge.synthesis.exports import write_exports
from qaforge.synthesis.split import split_of

from helpers import REPO


def jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_openai_messages_give_a_pair_per_answered_turn_with_its_history(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "chats.jsonl", {"group": "home", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Can I charge at home?"},
        {"role": "assistant", "content": "Yes, from a 240 V circuit."},
        {"role": "user", "content": [{"type": "text", "text": "How long"}, {"type": "text", "text": "does it take?"}]},
        {"role": "assistant", "content": "About 8 hours for a full charge."},
    ]}, {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?", "weight": 0},
        {"role": "user", "content": "What is CCS?"}, {"role": "assistant", "content": "A DC fast-charging standard."},
    ]})
    assert qa_format(QASource(path=path)) is QAFormat.MESSAGES
    first, second, third = read_qa_file(QASource(path=path))
    assert (first.question, first.answer, first.history) == ("Can I charge at home?", "Yes, from a 240 V circuit.", [])
    assert second.question == "How long\ndoes it take?" and second.history == [
        Turn(question="Can I charge at home?", answer="Yes, from a 240 V circuit.")]
    assert first.doc_id == second.doc_id == "chats.jsonl#home"
    # The turn marked weight 0 is history, not a pair; the line without a group is a group of its own.
    assert third.question == "What is CCS?" and third.history[0].question == "Hi"
    assert third.doc_id == "chats.jsonl#line 2"
    assert {p.kind for p in (first, second, third)} == {IMPORTED} and first.chunk_id == ""


def test_chatml_alpaca_and_csv(tmp_path: Path) -> None:
    chatml = jsonl(tmp_path / "chatml.jsonl", {"text": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                                       "What is OCPP?<|im_end|>\n<|im_start|>assistant\nThe Open Charge "
                                                       "Point Protocol.<|im_end|>\n"})
    [pair] = read_qa_file(QASource(path=chatml))
    assert (pair.question, pair.answer) == ("What is OCPP?", "The Open Charge Point Protocol.")

    alpaca = jsonl(tmp_path / "alpaca.jsonl", {"instruction": "Define idle fee.", "input": "", "output": "A fee."},
                   {"instruction": "Convert to kW.", "input": "7400 W", "output": "7.4 kW"})
    plain, with_input = read_qa_file(QASource(path=alpaca))
    assert plain.question == "Define idle fee." and with_input.question == "Convert to kW.\n\n7400 W"

    table = tmp_path / "support.csv"
    table.write_text('Frage,Antwort,Seite\n"What is a\nkWh?",A unit of energy.,glossary\nWhat is kW?,A unit of power.,\n')
    source = QASource(path=table, question_column="Frage", answer_column="Antwort", group_field="Seite")
    first, second = read_qa_file(source)
    assert first.question == "What is a\nkWh?" and first.doc_id == "support.csv#glossary"
    assert second.doc_id == "support.csv#line 4", "the line the row ends on"


def test_every_bad_line_is_named_by_file_line_and_field(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "bad.jsonl",
        {"messages": [{"role": "user", "content": "Fine?"}, {"role": "assistant", "content": "Yes."}]},
        "{not json",
        {"messages": [{"role": "assistant", "content": "An answer first."}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "user", "content": "Unanswered?"}]},
        {"messages": "hello"},
        {"group": ["a"], "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    )
    with pytest.raises(QAFileError) as caught:
        read_qa_file(QASource(path=path))
    message = str(caught.value)
    assert message.startswith(f"7 bad line(s) in {path} (messages format)")
    for expected in (f"{path}:2: not JSON", f"{path}:3: messages[0]: an assistant turn with no user turn",
                     f"{path}:4: messages[0].role: 'tool' is not one of", f"{path}:5: messages[0].content: part 0 is "
                     "of type 'image_url'", f"{path}:6: messages: no user turn answered",
                     f"{path}:7: messages: a non-empty list", f"{path}:8: group: a string or a number, not list"):
        assert expected in message, expected
    assert f"{path}:1:" not in message


def test_csv_without_the_named_columns_or_with_empty_cells(tmp_path: Path) -> None:
    table = tmp_path / "pairs.csv"
    table.write_text("q,a\nWhat is kW?,A unit of power.\n")
    with pytest.raises(QAFileError, match=r"pairs.csv:1: no column 'question' or 'answer' in the header \['q', 'a'\]"):
        read_qa_file(QASource(path=table))
    table.write_text("question,answer\nWhat is kW?,\n,An answer.\nA,B,C\n")
    with pytest.raises(QAFileError) as caught:
        read_qa_file(QASource(path=table))
    assert "pairs.csv:2: answer: missing or empty" in str(caught.value)
    assert "pairs.csv:3: question: missing or empty" in str(caught.value)
    assert "pairs.csv:4: more cells than the header has columns" in str(caught.value)


def test_a_shape_that_cannot_be_told_is_an_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "pairs.jsonl", {"prompt": "Q", "completion": "A"})
    with pytest.raises(QAFileError, match=r"pairs.jsonl:1: cannot tell the format from the fields \['completion', "
                                          r"'prompt'\]"):
        read_qa_file(QASource(path=path))
    with pytest.raises(QAFileError, match="cannot read it"):
        read_qa_file(QASource(path=tmp_path / "missing.jsonl", format=QAFormat.ALPACA))


def test_two_files_of_one_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="two files called 'pairs.csv'"):
        SourcesConfig(files=[tmp_path], qa=[{"path": "a/pairs.csv"}, {"path": "b/pairs.csv"}])


def test_imported_pairs_are_split_by_group_and_mixed_with_synthesized_ones(sample_chunks) -> None:
    source = QASource(path=REPO / "data" / "sample" / "support-answers.csv", group_field="page")
    imported = read_qa_file(source)
    cfg = SynthesisConfig()
    data = synthesize(sample_chunks, cfg, imported)
    splits = {name: [p for p in getattr(data, name) if p.kind == IMPORTED] for name in ("train", "val", "test")}
    assert sum(map(len, splits.values())) + len([p for p in data.knowledge if p.kind == IMPORTED]) == len(imported)
    for name, pairs in splits.items():
        assert all(split_of(p.doc_id, cfg) == name for p in pairs)
    assert len({p.doc_id for p in imported}) == 4, "one document per page"
    # The generator's pairs keep their splits: the test split is the same with or without the imported ones.
    assert [p for p in data.test if p.kind != IMPORTED] == synthesize(sample_chunks, cfg).test


def test_an_exported_dataset_imports_as_it_was_written(sample_dataset, tmp_path: Path) -> None:
    """qaforge's own messages export is a file another project can import."""
    write_exports(sample_dataset, "Answer briefly.", tmp_path)
    pairs = read_qa_file(QASource(path=tmp_path / "train.messages.jsonl"))
    assert [(p.question, p.answer, p.history) for p in pairs] == [
        (p.question, p.answer, p.history) for p in sample_dataset.train]


def test_an_edited_qa_file_changes_the_sources_fingerprint(tmp_path: Path) -> None:
    """`qaforge sources-changed` must see an edited QA file as a change to retrain for."""
    table = tmp_path / "pairs.csv"
    table.write_text("question,answer\nWhat is kW?,A unit of power.\n")
    sources = SourcesConfig(files=[REPO / "data" / "sample" / "docs" / "glossary.md"], qa=[{"path": table}],
                            state_dir=tmp_path / "state")
    before = fingerprint(sources)
    assert fingerprint(sources) == before
    table.write_text("question,answer\nWhat is kW?,A unit of power: a thousand watts.\n")
    assert fingerprint(sources) != before
    table.unlink()
    with pytest.raises(OSError, match=r"sources.qa: cannot read .*pairs.csv"):
        fingerprint(sources)
