"""The whole job: sources -> documents -> chunks -> retrieval index and QA pairs ->
fine-tuned model (logged with its index) -> evaluation -> MLflow model version ->
`production` alias when it wins.

Run it with `zenml pipeline run pipelines.domain_qa.domain_qa_pipeline -c configs/default.yaml`.
"""

from __future__ import annotations

from typing import Any

from zenml import Model, pipeline

from qaforge.basemodel import base_identity
from qaforge.config import config_digest, validate_config
from qaforge.evaluation.sets import check_gold_sets
from qaforge.logs import quiet_libraries
from qaforge.sources.qa_files import read_qa_sources
from steps.chunk import chunk_step
from steps.evaluate import evaluate_step
from steps.index import index_step
from steps.ingest import ingest_step
from steps.promote import promote_step
from steps.register import register_step
from steps.synthesize import synthesize_step
from steps.train import train_step


@pipeline(model=Model(name="qaforge", description="Domain QA model fine-tuned by qaforge"))
def domain_qa_pipeline(config: dict[str, Any]) -> None:
    # The body runs when the pipeline is compiled, so a bad config, gold set or QA file
    # fails here, before any step runs.
    cfg = validate_config(config)
    check_gold_sets(cfg.evaluation)
    read_qa_sources(cfg.sources.qa)
    quiet_libraries(cfg.verbose)
    corpus, imported, _, fingerprint = ingest_step(cfg.sources)
    chunks = chunk_step(corpus, cfg.chunking, cfg.model)
    index = index_step(chunks)
    data = synthesize_step(chunks, imported, cfg.synthesis, cfg.prompt)
    trained = train_step(data, index, cfg.model, cfg.training, cfg.prompt, cfg.retrieval)
    report = evaluate_step(data, trained, index, cfg.model, cfg.prompt, cfg.retrieval, cfg.evaluation, cfg.registry)
    # Tagged with what it was trained from, for `qaforge sources-changed`.
    registered = register_step(trained, cfg.registry, fingerprint, config_digest(cfg, base_identity(cfg.model)))
    promote_step(report, registered, cfg.evaluation, cfg.registry)
