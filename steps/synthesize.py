"""The synthesize step: qaforge.synthesis, with the dataset exported and logged."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from zenml import step

from qaforge.config import PromptConfig, SynthesisConfig
from qaforge.records import ChunkSet, ImportedPairs, QADataset
from qaforge.synthesis import synthesize
from qaforge.synthesis.exports import dataset_card, write_exports


def log_dataset(data: QADataset, system_prompt: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_exports(data, system_prompt, Path(tmp))
        mlflow.log_artifacts(tmp, "dataset")
    mlflow.log_text(dataset_card(data), "dataset/README.md")
    mlflow.log_metrics(
        {
            **{f"data/{split}_pairs": len(getattr(data, split)) for split in ("train", "val", "test", "knowledge",
                                                                               "memorisation")},
            **{f"data/dropped/{k}": v for k, v in data.dropped.items()},
            **{f"data/generator/{k}": v for k, v in data.generator_stats.items()},
        }
    )


@step(experiment_tracker=True)
def synthesize_step(chunks: ChunkSet, imported: ImportedPairs, synthesis: SynthesisConfig, prompt: PromptConfig
                    ) -> QADataset:
    data = synthesize(chunks, synthesis, imported.pairs)
    log_dataset(data, prompt.system_prompt)
    return data
