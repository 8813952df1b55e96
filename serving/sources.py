"""Model URIs -> local model directories (``model.onnx`` + ``model_card.json``).

* a local directory: ``/models/inspection/3`` (or ``file:///...``);
* a blob prefix: ``az://models/inspection/3`` (downloaded with :class:`edgeloop.core.blob.BlobStore`);
* the MLflow registry: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the registered
  version's artifacts are downloaded; the alias in the URI becomes an alias on the server).

A URI may end with ``#version=V&alias=A&name=N`` to set the served version id, an alias
and the served model name. Downloads are never trusted: the loader verifies every file
against the card's sha256 digests after they land.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from edgeloop.core.model_card import MODEL_CARD_FILE
from edgeloop.serving.errors import ModelLoadError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)
_MLFLOW = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


@dataclass(frozen=True)
class ModelSpec:
    uri: str
    version: str | None = None
    name: str | None = None
    aliases: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        uri, _, fragment = str(text).partition("#")
        opts: dict[str, list[str | None]] = {}
        for key, value in parse_qsl(fragment.replace(",", "&"), keep_blank_values=False):
            if key not in ("version", "alias", "name"):
                raise ModelLoadError(
                    f"unknown option {key!r} in model spec {text!r}; use version=, alias=, name="
                )
            opts.setdefault(key, []).append(value)
        return cls(
            uri=uri,
            version=(opts.get("version") or [None])[-1],
            name=(opts.get("name") or [None])[-1],
            aliases=tuple(a for a in opts.get("alias", []) if a),
        )


@dataclass
class ResolvedModel:
    spec: ModelSpec
    directory: Path
    version_hint: str | None = None  # the MLflow version number, when the URI named the registry
    aliases: tuple[str, ...] = field(default_factory=tuple)


def resolve(
    spec: ModelSpec | str, settings: Settings | None = None, cache_dir: Path | None = None
) -> ResolvedModel:
    """Make the model named by ``spec`` available as a local directory."""
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    uri = spec.uri
    if uri.startswith("models:/"):
        return _from_mlflow(spec, _need(settings, uri), _cache(cache_dir))
    if uri.startswith("az://"):
        return _from_blob(spec, _need(settings, uri), _cache(cache_dir))
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory {uri} does not exist (expected a directory with model.onnx "
            f"and {MODEL_CARD_FILE}, an az:// prefix or a models:/ URI)"
        )
    return ResolvedModel(spec, _model_dir(path, uri), aliases=spec.aliases)


def _need(settings: Settings | None, uri: str) -> Settings:
    if settings is None:
        raise ModelLoadError(f"{uri} needs edgeloop settings (blob storage / MLflow endpoints)")
    return settings


def _cache(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        return Path(tempfile.mkdtemp(prefix="edgeloop-serving-"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="model-", dir=cache_dir))


def _model_dir(root: Path, uri: str) -> Path:
    """``root`` itself if it holds a card, else the single sub-directory that does."""
    if (root / MODEL_CARD_FILE).exists():
        return root
    cards = sorted(root.rglob(MODEL_CARD_FILE))
    if len(cards) == 1:
        return cards[0].parent
    if not cards:
        raise ModelLoadError(
            f"{uri} holds no {MODEL_CARD_FILE}: a served model needs its card next to model.onnx"
        )
    raise ModelLoadError(f"{uri} holds {len(cards)} model cards; point at one model directory")


def _from_blob(spec: ModelSpec, settings: Settings, dest: Path) -> ResolvedModel:
    from edgeloop.core.blob import BlobStore, BlobUri

    u = BlobUri.parse(spec.uri)
    prefix = u.path.rstrip("/") + "/" if u.path else ""
    store = BlobStore.from_settings(settings)
    names = list(store.list(u.container, prefix))
    if not names:
        raise ModelLoadError(f"no blobs under {spec.uri}; expected model.onnx and {MODEL_CARD_FILE} there")
    for name in names:
        rel = name[len(prefix) :]
        if not rel or ".." in Path(rel).parts:
            continue
        store.download_to(BlobUri(u.container, name), dest / rel)
    log.info("downloaded %d files from %s", len(names), spec.uri)
    return ResolvedModel(spec, _model_dir(dest, spec.uri), aliases=spec.aliases)


def _from_mlflow(spec: ModelSpec, settings: Settings, dest: Path) -> ResolvedModel:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    m = _MLFLOW.match(spec.uri)
    if not m:
        raise ModelLoadError(
            f"{spec.uri} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    name, alias, version = m.group("name"), m.group("alias"), m.group("version")
    tracking_uri = settings.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
        download_uri = client.get_model_version_download_uri(name, mv.version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=download_uri, dst_path=str(dest), tracking_uri=tracking_uri
        )
    except MlflowException as e:
        raise ModelLoadError(f"cannot fetch {spec.uri} from MLflow at {tracking_uri}: {e.message}") from e
    log.info("downloaded %s (version %s) from MLflow", spec.uri, mv.version)
    aliases = tuple(dict.fromkeys(((alias,) if alias else ()) + spec.aliases))
    return ResolvedModel(
        spec, _model_dir(Path(local), spec.uri), version_hint=str(mv.version), aliases=aliases
    )
