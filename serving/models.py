"""The served model: loaded from the MLflow registry (`models:/<name>@<alias>`) or a
local model folder by the loader evaluation uses (qaforge/served.py), and swapped for a
new version when the alias moves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qaforge.config import InferenceOptions
from qaforge.served import LoadedModel, load_model, registry_version

log = logging.getLogger(__name__)


class ModelHolder:
    """The current model. A request reads `current` once and keeps that object: it
    builds its prompt with it and the engine answers with it, so a swap never changes
    the model under a request in flight."""

    def __init__(
        self,
        current: LoadedModel,
        options: InferenceOptions | None = None,
        on_swap: Callable[[LoadedModel], None] = lambda m: None,
    ) -> None:
        self.current = current
        self.options = options
        self.on_swap = on_swap

    async def watch(self, interval: float) -> None:
        """Poll the alias; load a new version off the event loop, then swap."""
        while True:
            await asyncio.sleep(interval)
            try:
                version = await asyncio.to_thread(registry_version, self.current.uri)
                if version == self.current.version:
                    continue
                log.info("model %s moved to v%s; loading it", self.current.uri, version)
                loaded = await asyncio.to_thread(load_model, self.current.uri, self.options)
            except Exception:  # a registry hiccup must not stop serving the loaded model
                log.exception("checking %s for a new version failed; still serving v%s",
                              self.current.uri, self.current.version)
                continue
            previous, self.current = self.current, loaded
            self.on_swap(loaded)
            log.info("now serving %s v%s (was v%s)", loaded.uri, loaded.version, previous.version)
