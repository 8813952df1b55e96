"""The serving image: its build context, a content-hash tag, and a build where a builder works.

The context holds whole packages, laid out as they are installed: ``edgeloop/__init__.py``,
``edgeloop/core`` (settings, blob, model card, preprocessing, model loading) and
``edgeloop/serving`` (the server, its Dockerfile and its pinned requirements). They are read
from the installed package, so the context is the same from a clone or from a wheel. The tag
is the sha256 of exactly those bytes: an unchanged server keeps its tag (no rebuild), an edit
elsewhere (streams, pipelines) does not change it, and a new model needs no image at all
(models are fetched by KServe's storage initializer from the storage URI).

On a cluster the pipeline builds with Kaniko (a container step compiled into the
pipeline YAML). Locally, :func:`build_locally` uses docker, podman or buildah if
one of them actually works, else records ``skipped`` and why.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

DOCKERFILE = "edgeloop/serving/Dockerfile"
EXCLUDE_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo"}
DEFAULT_REPOSITORY = "ghcr.io/edgeloop/edgeloop-serving"


def serving_image_sources() -> dict[str, Path]:
    """Path in the build context -> where it is installed: the packages the serving image holds."""
    from importlib import resources

    import edgeloop

    return {
        "edgeloop/__init__.py": Path(edgeloop.__file__),
        "edgeloop/core": Path(str(resources.files("edgeloop.core"))),
        "edgeloop/serving": Path(str(resources.files("edgeloop.serving"))),
    }


@dataclass
class BuildContext:
    archive: str
    content_hash: str
    image: str
    files: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BuildResult:
    image: str
    status: str  # built | exists | skipped | failed
    builder: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def context_files(sources: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """The files of the build context, sorted: path in the context -> file on disk."""
    out: dict[str, Path] = {}
    for rel, src in (sources if sources is not None else serving_image_sources()).items():
        if src.is_file():
            out[rel] = src
        elif src.is_dir():
            for f in sorted(src.rglob("*")):
                r = f.relative_to(src)
                if f.is_file() and not (set(r.parts) & EXCLUDE_PARTS) and f.suffix not in EXCLUDE_SUFFIXES:
                    out[f"{rel}/{r.as_posix()}"] = f
    return dict(sorted(out.items()))


def content_hash(sources: Mapping[str, Path] | None = None, files: Mapping[str, Path] | None = None) -> str:
    """sha256 over (path, bytes) of every context file: the image tag's source."""
    h = hashlib.sha256()
    for rel, path in (files if files is not None else context_files(sources)).items():
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def write_context(
    out: Path, repository: str = DEFAULT_REPOSITORY, sources: Mapping[str, Path] | None = None
) -> BuildContext:
    """A reproducible ``.tar.gz`` of the context (sorted, zeroed mtimes/owners) at ``out``."""
    files = context_files(sources)
    if DOCKERFILE not in files:
        raise FileNotFoundError(
            f"{DOCKERFILE} is missing from the build context: the serving image cannot be built"
        )
    digest = content_hash(files=files)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for rel, path in files.items():
            info = tarfile.TarInfo(rel)
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    import gzip

    with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    image = f"{repository}:{digest[:16]}"
    return BuildContext(archive=str(out), content_hash=digest, image=image, files=len(files))


def image_exists_in_registry(image: str, timeout_s: float = 10.0) -> bool | None:
    """HEAD the manifest over the OCI distribution API (anonymous); None when it cannot tell."""
    import httpx

    ref, _, tag = image.rpartition(":")
    host, _, name = ref.partition("/")
    if not tag or "." not in host:
        return None
    url = f"https://{host}/v2/{name}/manifests/{tag}"
    accept = (
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    try:
        r = httpx.head(url, headers={"Accept": accept}, timeout=timeout_s)
        if r.status_code == 401 and "bearer" in r.headers.get("www-authenticate", "").lower():
            params = dict(
                p.split("=", 1) for p in r.headers["www-authenticate"][7:].replace('"', "").split(",")
            )
            tok = (
                httpx.get(
                    params["realm"],
                    params={
                        "service": params.get("service", ""),
                        "scope": params.get("scope", f"repository:{name}:pull"),
                    },
                    timeout=timeout_s,
                )
                .json()
                .get("token")
            )
            r = httpx.head(
                url, headers={"Accept": accept, "Authorization": f"Bearer {tok}"}, timeout=timeout_s
            )
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    if r.status_code == 200:
        return True
    if r.status_code == 404:
        return False
    return None


def _works(tool: str) -> tuple[bool, str]:
    path = shutil.which(tool)
    if not path:
        return False, f"{tool} not installed"
    probe = [tool, "info"] if tool != "buildah" else [tool, "version"]
    try:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{tool} does not run ({e})"
    if r.returncode != 0:
        return (
            False,
            f"{tool} is installed but not usable: {(r.stderr or r.stdout).strip().splitlines()[-1:]}",
        )
    return True, ""


def build_locally(
    context: BuildContext,
    record_dir: Path | None = None,
    tools: tuple[str, ...] = ("docker", "podman", "buildah"),
) -> BuildResult:
    """Build ``context.image`` with the first builder that works; skip (with why) if none does.

    ``record_dir`` keeps one JSON record per built content hash: an unchanged context is not rebuilt.
    """
    record = Path(record_dir) / f"{context.content_hash[:16]}.json" if record_dir else None
    if record and record.exists():
        prev = json.loads(record.read_text())
        if prev.get("status") == "built":
            return BuildResult(
                context.image,
                "exists",
                prev.get("builder", ""),
                f"built before from the same content ({context.content_hash[:16]}): no rebuild",
            )
    why = []
    for tool in tools:
        ok, reason = _works(tool)
        if not ok:
            why.append(reason)
            continue
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(context.archive) as tar:
                tar.extractall(tmp, filter="data")
            cmd = (
                [tool, "build", "-t", context.image, "-f", f"{tmp}/{DOCKERFILE}", tmp]
                if tool != "buildah"
                else [tool, "bud", "-t", context.image, "-f", f"{tmp}/{DOCKERFILE}", tmp]
            )
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            result = BuildResult(context.image, "failed", tool, (r.stderr or r.stdout)[-2000:])
        else:
            result = BuildResult(context.image, "built", tool, f"built with {tool}")
        break
    else:
        result = BuildResult(
            context.image,
            "skipped",
            "",
            "no working image builder here: "
            + "; ".join(why)
            + ". The build context is kept; the cluster pipeline builds it with Kaniko.",
        )
    if record and result.status == "built":
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(result.as_dict()))
    return result
