"""Served-model specs -> local model directories, through :mod:`edgeloop.core.model_loader`.

A spec is a model URI (a local directory or ``file://``, an ``az://`` blob prefix,
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; the alias in a registry URI becomes an
alias on the server), optionally ending with ``#version=V&alias=A&name=N`` to set the
served version id, an alias and the served model name. Fetching is the shared loader's;
downloads are never trusted: :func:`edgeloop.serving.model.load_version` verifies every file
against the card's sha256 digests before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from edgeloop.core.errors import ModelError
from edgeloop.core.model_loader import fetch_model
from edgeloop.serving.errors import ModelLoadError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


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
    """Make the model named by ``spec`` available as a local directory (:class:`ModelLoadError` if not)."""
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    try:
        fetched = fetch_model(spec.uri, settings, cache_dir)
    except ModelError as e:
        raise ModelLoadError(str(e)) from e
    aliases = tuple(dict.fromkeys(((fetched.alias,) if fetched.alias else ()) + spec.aliases))
    return ResolvedModel(spec, fetched.directory, version_hint=fetched.registry_version, aliases=aliases)
