"""The index step: a BM25 index over the chunks (qaforge.retrieval), stored as its own
artifact, so an unchanged chunk set reuses it from ZenML's cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zenml import step
from zenml.enums import ArtifactType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.utils import io_utils

from qaforge.records import ChunkSet
from qaforge.retrieval import Retriever


class RetrieverMaterializer(BaseMaterializer):
    """The index's own files (bm25s arrays and the passages) in the artifact store, so a
    remote store and a step on another machine work alike."""

    ASSOCIATED_TYPES = (Retriever,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> Retriever:
        with self.get_temporary_directory(delete_at_exit=True) as local:
            io_utils.copy_dir(self.uri, local)
            return Retriever.load(Path(local))

    def save(self, data: Retriever) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as local:
            data.save(Path(local))
            io_utils.copy_dir(local, self.uri)

    def extract_metadata(self, data: Retriever) -> dict[str, Any]:
        return {"passages": len(data), "documents": len({p.doc_id for p in data.passages})}


@step(output_materializers=RetrieverMaterializer)
def index_step(chunks: ChunkSet) -> Retriever:
    retriever = Retriever.build(chunks)
    print(f"Indexed {len(retriever)} passages for retrieval")
    return retriever
