"""Served-model specs -> local model directories, through :mod:`edgeloop.core.model_loader`.

A spec is a model URI (a local directory or ``file://``, an ``az://`` blob prefix,
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; the alias in a registry URI becomes an
alias on the server), optionally ending with ``#version=V&alias=A&name=N&digest=SHA256`` to set
the served version id, an alias, the served model name and the digest the model must have.
Fetching is the shared loader's; downloads are never trusted:
:func:`edgeloop.serving.model.load_version` verifies every file against the card's sha256
digests, and the card against every pinned digest (the spec's, ``--expected-digest``, the
registry's tag), before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from edgeloop.core.blob import SCHEME as BLOB_SCHEME
from edgeloop.core.blob import BlobUri
from edgeloop.core.errors import ModelError
from edgeloop.core.model_loader import REGISTRY_SCHEME, fetch_model, pinned_digests
from edgeloop.serving.errors import ModelLoadError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


@dataclass(frozen=True)
class ModelSpec:
    uri: str
    version: str | None = None
    name: str | None = None
    aliases: tuple[str, ...] = ()
    digest: str | None = None  # the ModelCard.digest() this model must have

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        uri, _, fragment = str(text).partition("#")
        opts: dict[str, list[str | None]] = {}
        for key, value in parse_qsl(fragment.replace(",", "&"), keep_blank_values=False):
            if key not in ("version", "alias", "name", "digest"):
                raise ModelLoadError(
                    f"unknown option {key!r} in model spec {text!r}; use version=, alias=, name=, digest="
                )
            opts.setdefault(key, []).append(value)
        return cls(
            uri=uri,
            version=(opts.get("version") or [None])[-1],
            name=(opts.get("name") or [None])[-1],
            aliases=tuple(a for a in opts.get("alias", []) if a),
            digest=(opts.get("digest") or [None])[-1],
        )


@dataclass
class ResolvedModel:
    spec: ModelSpec
    directory: Path
    version_hint: str | None = None  # the MLflow version number, when the URI named the registry
    aliases: tuple[str, ...] = field(default_factory=tuple)
    pinned: tuple[str, ...] = ()  # digests the model must have: the spec's, the server's, the registry's


def resolve(
    spec: ModelSpec | str,
    settings: Settings | None = None,
    cache_dir: Path | None = None,
    expected_digest: str | None = None,
) -> ResolvedModel:
    """Make the model named by ``spec`` available as a local directory (:class:`ModelLoadError` if not).

    ``expected_digest`` (the server's ``--expected-digest``) is pinned beside the spec's own.
    """
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    try:
        fetched = fetch_model(spec.uri, settings, cache_dir)
    except ModelError as e:
        raise ModelLoadError(str(e)) from e
    aliases = tuple(dict.fromkeys(((fetched.alias,) if fetched.alias else ()) + spec.aliases))
    pinned = pinned_digests(fetched, spec.digest) + ((expected_digest,) if expected_digest else ())
    return ResolvedModel(
        spec, fetched.directory, version_hint=fetched.registry_version, aliases=aliases, pinned=pinned
    )


def default_admin_sources(settings: Settings | None) -> tuple[str, ...]:
    """What admin loads may name unless the server is told otherwise: the registry and the models container."""
    if settings is None:
        return (REGISTRY_SCHEME,)
    return (REGISTRY_SCHEME, f"{BLOB_SCHEME}{settings.blob.models_container}/")


def source_allowed(uri: str, allowed: tuple[str, ...]) -> bool:
    """True when ``uri`` falls under one of ``allowed``:

    * ``models:/`` (any registered model) or ``models:/NAME`` (that model's versions and aliases);
    * ``az://CONTAINER/`` or ``az://CONTAINER/PREFIX/``: blobs in that container under that prefix;
    * a local directory (or ``file://`` one): model directories inside it, after resolving symlinks.
    """
    for prefix in allowed:
        if prefix.startswith(REGISTRY_SCHEME) and uri.startswith(REGISTRY_SCHEME):
            name = prefix[len(REGISTRY_SCHEME) :].strip("/")
            if not name or uri[len(REGISTRY_SCHEME) :].startswith((f"{name}@", f"{name}/")):
                return True
        elif prefix.startswith(BLOB_SCHEME) and uri.startswith(BLOB_SCHEME):
            try:
                want, got = BlobUri.parse(prefix), BlobUri.parse(uri)
            except ValueError:
                continue
            parts = [p for p in got.path.split("/") if p]
            if got.container != want.container or ".." in parts or "." in parts:
                continue
            want_parts = [p for p in want.path.split("/") if p]
            if parts[: len(want_parts)] == want_parts:
                return True
        elif not prefix.startswith((REGISTRY_SCHEME, BLOB_SCHEME)) and not uri.startswith(
            (REGISTRY_SCHEME, BLOB_SCHEME)
        ):
            root = Path(prefix.removeprefix("file://")).expanduser().resolve()
            if Path(uri.removeprefix("file://")).expanduser().resolve().is_relative_to(root):
                return True
    return False
