"""Settings of the API: the model to serve and every `serving` option of the run
config, each also settable as a QAFORGE_<NAME> environment variable under uvicorn."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from qaforge.config import ServingConfig


class ServeSettings(ServingConfig, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QAFORGE_", extra="ignore")

    model_uri: str
    tracking_uri: str | None = None
