"""`qaforge evaluate`: any model scored on a config's question sets, closed book and with
retrieval, against the base model, without training it and without ZenML: to compare
base models, or to score a model from elsewhere on your gold set. The question sets
come from the same ingest, chunking, synthesis and split as a pipeline run's, so a
model this config trained is never asked about its training documents' test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qaforge.config import QAForgeConfig
from qaforge.evaluation.answers import AnswerCache, System
from qaforge.evaluation.run import evaluate, systems
from qaforge.evaluation.sets import question_sets
from qaforge.records import EvalReport, ModelLabel, ModelRef, QADataset, is_mlflow_uri
from qaforge.retrieval import Retriever
from qaforge.served import Answering, logged_answering

BASE = "base"  # `--model base`: the configured base model alone


@dataclass(frozen=True)
class Prepared:
    """What every system is asked from: the question sets' source and the index."""

    data: QADataset
    index: Retriever


def prepare(cfg: QAForgeConfig) -> Prepared:
    """The dataset and index a pipeline run of `cfg` builds, from the same stages (and
    their caches: stored conversions, chunks)."""
    from qaforge.chunking import chunk_corpus
    from qaforge.ingest import ingest
    from qaforge.modeling import load_tokenizer, resolve_base_model
    from qaforge.sources.qa_files import read_qa_sources
    from qaforge.synthesis import synthesize

    imported = read_qa_sources(cfg.sources.qa)
    corpus, _ = ingest(cfg.sources)
    chunks = chunk_corpus(corpus, load_tokenizer(resolve_base_model(cfg.model)), cfg.chunking.max_tokens,
                          cfg.chunking.cache_dir)
    return Prepared(synthesize(chunks, cfg.synthesis, imported), Retriever.build(chunks))


def check_model(model: str) -> None:
    """Refuse, before anything runs, what names no model."""
    if model != BASE and not is_mlflow_uri(model) and not Path(model).is_dir():
        raise ValueError(f"{model!r} is not a model folder, a models:/ or runs:/ URI, or '{BASE}'")


def scored_systems(cfg: QAForgeConfig, model: str, index: Retriever
                   ) -> tuple[dict[ModelLabel, System], ModelLabel, ModelLabel]:
    """The systems to score, and which two the report compares. A registered model is
    asked as it is served (its own system prompt, top_k and index), against the base
    asked the same way; a folder is asked as `cfg` would serve it; `base` is the base
    model with passages against itself closed book."""
    from qaforge.modeling import resolve_base_model

    base = ModelRef(location := resolve_base_model(cfg.model), identity=location)
    closed = Answering(cfg.prompt.system_prompt)
    retrieving = Answering(cfg.prompt.system_prompt, index, cfg.retrieval.top_k)
    if model == BASE:
        return ({ModelLabel.BASE: System(base, closed), ModelLabel.BASE_RETRIEVAL: System(base, retrieving)},
                ModelLabel.BASE_RETRIEVAL, ModelLabel.BASE)
    if is_mlflow_uri(model):
        served = logged_answering(model)
        gated, baseline = ((ModelLabel.CANDIDATE_RETRIEVAL, ModelLabel.BASE_RETRIEVAL) if served.retrieves
                           else (ModelLabel.CANDIDATE, ModelLabel.BASE))
        # Identity: a version's URI; an alias moves, so its answers are never cached.
        return ({gated: System(ModelRef(model, identity=model), served),
                 baseline: System(base, retrieving if served.retrieves else closed)}, gated, baseline)
    check_model(model)
    folder = str(Path(model).resolve())
    return systems(ModelRef(folder, identity=folder), base, None, closed, retrieving, cfg.retrieval.serve,
                   cfg.evaluation.compare_modes)


def score(cfg: QAForgeConfig, model: str, prepared: Prepared | None = None) -> EvalReport:
    """Every configured question set (and the guard) answered by `model` and the base."""
    prepared = prepared or prepare(cfg)
    chosen, gated, baseline = scored_systems(cfg, model, prepared.index)
    return evaluate(chosen, question_sets(prepared.data, cfg.evaluation), cfg.evaluation, gated=gated,
                    baseline=baseline, gate_on=cfg.evaluation.gate_on, cache=AnswerCache(cfg.evaluation.cache_dir))
