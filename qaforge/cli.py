"""`qaforge` command line: what the ZenML CLI does not do.
Pipelines themselves run with `zenml pipeline run` (see README)."""

from __future__ import annotations

import atexit
import gc
import re
import sys
import time
from enum import IntEnum
from pathlib import Path

import click

from qaforge.config import ConfigError, load_config
from qaforge.export import GGUFType

DEFAULT_CONFIG = Path("configs/default.yaml")
config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
    show_default=True, help="Run config YAML.",
)


@click.group()
def main() -> None:
    """Build, evaluate and serve domain QA models."""


def _skip_final_collection() -> None:
    """For the short commands that read the registry or move an alias: interpreter
    shutdown garbage-collects the 3,600 modules ZenML and MLflow import, 1.5 s of such
    a command's 6 on 2 cores, and nothing these commands leave behind needs it."""
    atexit.register(gc.freeze)


@main.command()
@click.option("--stack", help="Default: qaforge, or qaforge-shared with --tracking-uri.")
@click.option("--tracking-uri", help="A team's MLflow tracking server (http[s]://...); default: a local store.")
@config_option
def setup(stack: str | None, tracking_uri: str | None, config_path: Path) -> None:
    """Create and activate the ZenML stack (idempotent) and cache the base model."""
    from qaforge.modeling import resolve_base_model
    from qaforge.stack import setup_stack
    from qaforge.tracking import StackError

    cfg = _load(config_path)
    if tracking_uri is not None and not tracking_uri.startswith(("http://", "https://")):
        click.echo(f"--tracking-uri must be an http(s) URL of an MLflow server, not '{tracking_uri}'", err=True)
        sys.exit(2)
    try:
        name = setup_stack(stack or ("qaforge-shared" if tracking_uri else "qaforge"), tracking_uri=tracking_uri)
    except StackError as exc:
        click.echo(f"Cannot set up the stack: {exc}", err=True)
        sys.exit(2)
    where = f"MLflow server {tracking_uri}" if tracking_uri else "local MLflow store"
    click.echo(f"ZenML stack '{name}' is active (MLflow tracker + model registry on the {where}).")
    click.echo(f"Base model ready at {resolve_base_model(cfg.model)}")


class SourcesCheck(IntEnum):
    """`qaforge sources-changed`'s exit codes, apart from Python's own (1 for an uncaught
    exception, 2 for a bad command line), so that a crash never reads as an answer: a
    schedule that takes every other code for an error fails closed."""

    CHANGED = 10
    UNCHANGED = 11
    ERROR = 12


@main.command("sources-changed")
@config_option
def sources_changed(config_path: Path) -> None:
    """Exit 10 if a run could train something new: the sources (fetched and hashed, not
    converted) or the config differ from those of the newest registered version in the
    tracking server. Exit 11 if nothing changed; 12 (or any other code) when it cannot
    tell, with what failed."""
    _skip_final_collection()
    cfg = _load(config_path)
    try:
        from qaforge.basemodel import base_identity
        from qaforge.config import config_digest
        from qaforge.ingest import fingerprint
        from qaforge.registry import what_changed

        start = time.perf_counter()
        fetched = fingerprint(cfg.sources)
        fetch_s = time.perf_counter() - start
        reasons = what_changed(cfg.registry.model_name, fetched, config_digest(cfg, base_identity(cfg.model)))
    except Exception as exc:  # any failure, a crawl's or the registry's: never "unchanged"
        click.echo(f"Cannot tell whether the sources changed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(SourcesCheck.ERROR)
    # Fetching grows with the sources and the network, the rest does not: said apart.
    click.echo(f"Fetched and hashed the sources in {fetch_s:.1f} s.", err=True)
    if not reasons:
        click.echo(f"Unchanged: the sources and the config are those of the newest version of "
                   f"'{cfg.registry.model_name}'.")
        sys.exit(SourcesCheck.UNCHANGED)
    click.echo("Changed: " + "; ".join(reasons) + ".")
    sys.exit(SourcesCheck.CHANGED)


@main.command()
@config_option
@click.option("--version", "version", help="Model version; default: the newest registered one.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the report into.")
def report(config_path: Path, version: str | None, out: Path) -> None:
    """Fetch the evaluation report of a model version from the tracking server."""
    from qaforge.registry import latest_version
    from qaforge.tracking import registry_client

    cfg = _load(config_path)
    name = cfg.registry.model_name
    client = registry_client()
    found = client.get_model_version(name, version) if version else latest_version(name)
    if found is None:
        click.echo(f"No version of '{name}' is registered.", err=True)
        sys.exit(1)
    out.mkdir(parents=True, exist_ok=True)
    path = client.download_artifacts(found.run_id, "report", str(out))
    click.echo(f"Evaluation report of {name} v{found.version}: {path}")


@main.command("evaluate")
@config_option
@click.option("--model", "models", multiple=True, metavar="MODEL",
              help="A model folder, a models:/ or runs:/ URI, or 'base' (the configured base model alone); "
                   "repeat to score several. Default: models:/<registry.model_name>@<registry.alias>.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the report (one subfolder per model when several). "
                   "Default: <evaluation.report_dir>/evaluate-<time>.")
def evaluate_command(config_path: Path, models: tuple[str, ...], out: Path | None) -> None:
    """Score models on the config's question sets and gold sets, closed book and with
    retrieval, against the base model, without training: the pipeline's report."""
    import mlflow

    from qaforge.evaluation.report import comparisons_text, metrics_text, write_report
    from qaforge.evaluation.standalone import check_model, prepare, score
    from qaforge.records import is_mlflow_uri

    cfg = _load(config_path)
    models = models or (f"models:/{cfg.registry.model_name}@{cfg.registry.alias}",)
    try:
        for model in models:
            check_model(model)
    except ValueError as exc:
        click.echo(f"--model {exc}", err=True)
        sys.exit(2)
    if any(is_mlflow_uri(m) for m in models):
        from qaforge.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
    out = out or Path(cfg.evaluation.report_dir) / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    prepared = prepare(cfg)  # once for every model
    for model in models:
        report = score(cfg, model, prepared)
        folder = out if len(models) == 1 else out / re.sub(r"[^\w.@-]+", "_", model).strip("_")
        paths = write_report(report, None, folder, title=f"{model} on {config_path}",
                             primary_metric=cfg.evaluation.primary_metric, examples=cfg.evaluation.examples_in_report)
        (folder / "report.json").write_text(report.model_dump_json(indent=1))
        shown = report.decided_on or next(iter(report.sets.values()))
        click.echo(f"{model}, on the {shown.name} set:\n{metrics_text(shown.metrics)}")
        click.echo(comparisons_text(report, cfg.evaluation.primary_metric))
        click.echo(f"Report: {paths['html']}")


@main.command()
@config_option
def doctor(config_path: Path) -> None:
    """This machine, the device and precision each stage will use, and what will be slow."""
    from qaforge.doctor import check

    click.echo(check(_load(config_path)).render())


@main.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a run config without running anything: every key, the checks across
    sections (question sets, prompt and length budgets), every line of the gold sets
    and of the question-answer files."""
    from qaforge.evaluation.sets import check_gold_sets
    from qaforge.sources.qa_files import read_qa_sources

    cfg = _load(config_path)
    try:
        check_gold_sets(cfg.evaluation)
        imported = read_qa_sources(cfg.sources.qa)
    except ValueError as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(2)
    pairs = f"; {len(imported)} imported pairs" if cfg.sources.qa else ""
    click.echo(f"{config_path}: ok; question sets: {', '.join(cfg.question_sets())}{pairs}")


@main.command()
@config_option
def info(config_path: Path) -> None:
    """Where to look: the MLflow store, its UI command and the production model."""
    from qaforge.records import EvalMetric
    from qaforge.tracking import RegistryError, registry_client, tracking_uri, version_by_alias

    _skip_final_collection()
    cfg = _load(config_path)
    uri = tracking_uri()
    click.echo(f"MLflow tracking URI: {uri}")
    click.echo(f"MLflow UI:           mlflow ui --backend-store-uri {uri} --port 5000")
    try:
        version = version_by_alias(cfg.registry.model_name, cfg.registry.alias)
    except RegistryError as exc:
        click.echo(f"Cannot read the production model: {exc}", err=True)
        sys.exit(2)
    if version is None:
        click.echo(f"No version of '{cfg.registry.model_name}' has alias @{cfg.registry.alias} yet.")
        return
    click.echo(f"Production model:    models:/{cfg.registry.model_name}@{cfg.registry.alias} = v{version.version}")
    run = registry_client().get_run(version.run_id)
    click.echo(f"  gated on the {run.data.tags.get('eval.gate_set', '?')} set")
    # The primary metric of every system on every question set, its gains, retrieval recall
    # and the guard; the MLflow UI has the rest.
    primary = cfg.evaluation.primary_metric
    for name, value in sorted(run.data.metrics.items()):
        key = EvalMetric.parse(name)
        if key is not None and (key.metric.startswith(primary) or key.metric in ("recall", "general_accuracy")):
            click.echo(f"  {name:<64} {value:.4f}")


@main.command()
@config_option
def rollback(config_path: Path) -> None:
    """Give @production back to the version holding @previous (and swap them)."""
    import yaml

    from qaforge.registry import rollback as swap
    from qaforge.registry import set_zenml_stage

    _skip_final_collection()
    cfg = _load(config_path)
    name, registry = cfg.registry.model_name, cfg.registry
    try:
        now, before = swap(name, registry.alias, registry.previous_alias)
    except LookupError as exc:
        click.echo(f"Cannot roll back: {exc}", err=True)
        sys.exit(1)
    click.echo(f"models:/{name}@{registry.alias} = v{now}" + (f"; @{registry.previous_alias} = v{before}" if before else ""))
    zenml_model = (yaml.safe_load(config_path.read_text()).get("model") or {}).get("name")
    if zenml_model and (zenml_version := set_zenml_stage(zenml_model, now)):
        click.echo(f"ZenML model {zenml_model} version {zenml_version} is in stage production")


@main.command()
@config_option
@click.option("--model-uri", help="Default: models:/<registry.model_name>@<registry.alias>; or a local model folder.")
@click.option("--host", help="Default: serving.host from the config.")
@click.option("--port", type=int, help="Default: serving.port from the config.")
def serve(config_path: Path, model_uri: str | None, host: str | None, port: int | None) -> None:
    """Serve the production model over HTTP (API keys, OpenAI-compatible)."""
    from qaforge.tracking import tracking_uri
    from serving.app import create_app
    from serving.server import serve as run_server
    from serving.settings import ServeSettings

    cfg = _load(config_path)
    local = model_uri is not None and Path(model_uri).is_dir()
    settings = ServeSettings(
        **cfg.serving.model_dump(),
        model_uri=model_uri or f"models:/{cfg.registry.model_name}@{cfg.registry.alias}",
        tracking_uri=None if local else tracking_uri(),
    )
    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. no API keys configured
        click.echo(f"Cannot serve: {exc}", err=True)
        sys.exit(2)
    run_server(app, settings, host, port)


@main.command()
@config_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write hf/ and gguf/ into.")
@click.option("--version", "version", help="Model version; default: the one at registry.alias.")
@click.option("--model-uri", help="Any MLflow model URI or local model folder instead.")
@click.option("--gguf-type", type=click.Choice([t.value for t in GGUFType]), default=GGUFType.F16.value,
              show_default=True, help="Type of the GGUF's matrices.")
@click.option("--gguf/--no-gguf", default=True, show_default=True)
@click.option("--closed-book", is_flag=True,
              help="Write the GGUF of a model that answers from retrieved passages anyway (it runs without them).")
@click.option("--push-to-hub", "repo_id", help="Also upload the Hugging Face folder to this Hub repo (needs HF_TOKEN).")
@click.option("--public", is_flag=True, help="Make a new Hub repo public (default: private).")
def export(config_path: Path, out: Path, version: str | None, model_uri: str | None, gguf_type: str, gguf: bool,
           closed_book: bool, repo_id: str | None, public: bool) -> None:
    """Write a model version as a Hugging Face folder and a GGUF file with an Ollama Modelfile."""
    from qaforge.export import export_model, push_to_hub
    from qaforge.served import is_mlflow_uri
    from qaforge.tracking import tracking_uri

    cfg = _load(config_path)
    name = cfg.registry.model_name
    location = model_uri or (f"models:/{name}/{version}" if version else f"models:/{name}@{cfg.registry.alias}")
    if is_mlflow_uri(location):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
    try:
        exported = export_model(location, out, GGUFType(gguf_type), gguf, name, closed_book)
    except ValueError as exc:
        click.echo(f"Cannot export {location}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"Hugging Face folder: {exported.hf_dir}")
    if exported.gguf and exported.modelfile:
        click.echo(f"GGUF:                {exported.gguf}")
        if exported.retrieval:
            click.echo("Warning: this model was trained to answer from retrieved passages; the GGUF runs without them "
                       "(closed book), as it was never evaluated.", err=True)
        click.echo(f"Ollama:              cd {exported.modelfile.parent} && ollama create {name} -f Modelfile")
    if repo_id:
        click.echo(f"Pushed to {push_to_hub(exported.hf_dir, repo_id, private=not public)}")


@main.group()
def keys() -> None:
    """API keys for `qaforge serve`: stored hashed in serving.keys_file."""


def _keys_file(config_path: Path) -> Path:
    keys_file = _load(config_path).serving.keys_file
    if keys_file is None:
        click.echo(f"{config_path}: set parameters.config.serving.keys_file first", err=True)
        sys.exit(2)
    return keys_file


@keys.command("create")
@config_option
@click.argument("name")
@click.option("--requests-per-minute", type=int, help="Default: serving.requests_per_minute.")
@click.option("--tokens-per-minute", type=int, help="Default: serving.tokens_per_minute.")
def keys_create(config_path: Path, name: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
    """Create a key named NAME and print it (only its hash is stored)."""
    from serving.keys import create_key

    keys_file = _keys_file(config_path)
    try:
        key = create_key(keys_file, name, requests_per_minute, tokens_per_minute)
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(key)
    click.echo(f"Saved the hash of key '{name}' in {keys_file}; the key itself is shown only now.", err=True)


@keys.command("revoke")
@config_option
@click.argument("name")
def keys_revoke(config_path: Path, name: str) -> None:
    """Revoke key NAME; a running server stops accepting it within a second."""
    from serving.keys import revoke_key

    keys_file = _keys_file(config_path)
    try:
        revoke_key(keys_file, name)
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"Revoked '{name}' in {keys_file}.")


def _load(config_path: Path):
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
