"""The serving image: its build context, a content-hash tag, and a build where a builder works.

What goes into the image is the serving code, the shared library code it imports
(``edgeloop``), the pinned dependency set and ``serving/Dockerfile``. The tag is
the sha256 of exactly those bytes, so an unchanged server keeps its tag (no
rebuild), and a new model needs no image at all (models are fetched by KServe's
storage initializer from the storage URI).

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
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the serving image is built from, relative to the repository root.
CONTEXT_PATHS = ("serving", "edgeloop", "requirements/constraints.txt", "pyproject.toml")
DOCKERFILE = "serving/Dockerfile"
EXCLUDE_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo"}
DEFAULT_REPOSITORY = "ghcr.io/edgeloop/edgeloop-serving"


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


def context_files(root: Path = ROOT) -> list[Path]:
    """The files of the build context, sorted, relative to ``root``."""
    out: list[Path] = []
    for rel in CONTEXT_PATHS:
        p = root / rel
        if p.is_file():
            out.append(Path(rel))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                r = f.relative_to(root)
                if f.is_file() and not (set(r.parts) & EXCLUDE_PARTS) and f.suffix not in EXCLUDE_SUFFIXES:
                    out.append(r)
    return sorted(set(out))


def content_hash(root: Path = ROOT, files: list[Path] | None = None) -> str:
    """sha256 over (path, bytes) of every context file: the image tag's source."""
    h = hashlib.sha256()
    for rel in files if files is not None else context_files(root):
        h.update(rel.as_posix().encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def write_context(out: Path, repository: str = DEFAULT_REPOSITORY, root: Path = ROOT) -> BuildContext:
    """A reproducible ``.tar.gz`` of the context (sorted, zeroed mtimes/owners) at ``out``."""
    files = context_files(root)
    if not (root / DOCKERFILE).exists():
        raise FileNotFoundError(f"{DOCKERFILE} is missing from {root}: the serving image cannot be built")
    digest = content_hash(root, files)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for rel in files:
            info = tarfile.TarInfo(rel.as_posix())
            data = (root / rel).read_bytes()
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
