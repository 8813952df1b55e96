"""Azure Blob Storage access (Azurite locally), with edgeloop's ``az://container/path`` URIs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

    from edgeloop.core.config import Settings

SCHEME = "az://"


class BlobNotFoundError(EdgeloopError, LookupError):
    """A blob that a record points to is not in storage (deleted, or lost by a storage crash right
    after it was written). The message names the blob and what points to it."""

    def __init__(self, uri: BlobUri, account: str, missing: str = "blob", referenced_by: str = ""):
        where = f" (referenced by {referenced_by})" if referenced_by else ""
        super().__init__(
            f"{uri}{where} is missing from blob storage account {account or '?'} ({missing} not found): "
            "it was deleted, or storage lost it (e.g. killed right after the write); write it again "
            "from its source, or drop the record that points to it"
        )
        self.uri = uri


@dataclass(frozen=True)
class BlobUri:
    container: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> BlobUri:
        if not uri.startswith(SCHEME):
            raise ValueError(f"{uri!r} is not a blob URI; expected az://CONTAINER/PATH")
        container, _, path = uri[len(SCHEME) :].partition("/")
        if not container:
            raise ValueError(f"{uri!r} names no container; expected az://CONTAINER/PATH")
        return cls(container, path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.container}/{self.path}"


def _conn_parts(conn: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in conn.split(";") if "=" in p)


class BlobStore:
    """A thin layer over ``BlobServiceClient``: idempotent uploads, downloads, listing, SAS URLs."""

    def __init__(self, connection_string: str):
        from azure.storage.blob import BlobServiceClient

        self._conn = connection_string
        self.client: BlobServiceClient = BlobServiceClient.from_connection_string(
            connection_string, retry_total=5, connection_timeout=10, read_timeout=60
        )
        parts = _conn_parts(connection_string)
        self.account = parts.get("AccountName", "")
        self._key = parts.get("AccountKey")

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(settings.blob_connection_string())

    def ensure_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_container(name)
        except ResourceExistsError:
            pass

    def upload(
        self, uri: str | BlobUri, data: bytes, overwrite: bool = True, metadata: dict[str, str] | None = None
    ) -> BlobUri:
        u = BlobUri.parse(uri) if isinstance(uri, str) else uri
        self.client.get_blob_client(u.container, u.path).upload_blob(
            data, overwrite=overwrite, metadata=metadata
        )
        return u

    def upload_file(self, uri: str | BlobUri, path: Path) -> BlobUri:
        u = BlobUri.parse(uri) if isinstance(uri, str) else uri
        with open(path, "rb") as fh:
            self.client.get_blob_client(u.container, u.path).upload_blob(fh, overwrite=True)
        return u

    def download(self, uri: str | BlobUri, referenced_by: str = "") -> bytes:
        """The blob's bytes; :class:`BlobNotFoundError` naming it (and ``referenced_by``) if it is gone."""
        from azure.core.exceptions import ResourceNotFoundError

        u = BlobUri.parse(uri) if isinstance(uri, str) else uri
        try:
            return self.client.get_blob_client(u.container, u.path).download_blob().readall()
        except ResourceNotFoundError as e:
            missing = "container" if getattr(e, "error_code", None) == "ContainerNotFound" else "blob"
            raise BlobNotFoundError(u, self.account, missing, referenced_by) from e

    def download_to(self, uri: str | BlobUri, path: Path, referenced_by: str = "") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.download(uri, referenced_by))
        return path

    def exists(self, uri: str | BlobUri) -> bool:
        u = BlobUri.parse(uri) if isinstance(uri, str) else uri
        return bool(self.client.get_blob_client(u.container, u.path).exists())

    def list(self, container: str, prefix: str = "") -> Iterator[str]:
        for b in self.client.get_container_client(container).list_blobs(name_starts_with=prefix or None):
            yield b.name

    def sas_url(self, uri: str | BlobUri, hours: float = 12.0) -> str:
        """A read-only URL a browser (Label Studio's labelers) can open without the account key.

        Valid for ``hours`` only: tasks are re-signed by a sync (:func:`edgeloop.core.labelstudio.refresh_image_links`).
        """
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        u = BlobUri.parse(uri) if isinstance(uri, str) else uri
        if not self._key:
            raise ValueError("the storage connection string has no AccountKey; SAS URLs need one")
        token = generate_blob_sas(
            account_name=self.account,
            container_name=u.container,
            blob_name=u.path,
            account_key=self._key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )
        return f"{self.client.get_blob_client(u.container, u.path).url}?{token}"

    def allow_browser_origins(self, origins: Sequence[str], max_age_s: int = 3600) -> None:
        """CORS rules on the blob service so pages served from ``origins`` can GET blobs (with a SAS).

        Replaces the service's CORS rules with one read-only rule; other service properties are kept.
        """
        from azure.storage.blob import CorsRule

        rule = CorsRule(
            allowed_origins=list(origins),
            allowed_methods=["GET", "HEAD", "OPTIONS"],
            allowed_headers=["*"],
            exposed_headers=["*"],
            max_age_in_seconds=max_age_s,
        )
        self.client.set_service_properties(cors=[rule])

    def browser_origins(self) -> tuple[str, ...]:
        """The origins the blob service's CORS rules allow."""
        props = self.client.get_service_properties()
        return tuple(o for rule in props.get("cors") or [] for o in rule.allowed_origins.split(","))

    def uri_from_url(self, url: str) -> BlobUri:
        """Turn a (SAS) blob URL of this account back into an ``az://`` URI."""
        path = url.split("?", 1)[0]
        base = self.client.url.rstrip("/")
        if not path.startswith(base + "/"):
            raise ValueError(f"{url} is not a blob of this storage account ({base})")
        container, _, name = path[len(base) + 1 :].partition("/")
        from urllib.parse import unquote

        return BlobUri(container, unquote(name))
