"""The project's container images: build contexts, content-hash tags, local builds and handoff.

One naming scheme (``<repository>/edgeloop-<role>:<content hash>``):

- ``edgeloop-serving`` (``serving/Dockerfile``): the model server, no torch (``edgeloop-serving-gpu``:
  the same with ONNX Runtime for CUDA, built on request);
- ``edgeloop-pipeline`` (``pipelines/Dockerfile``): the package without torch (every KFP step but
  training and export, the drift CronJob) and kubectl, which the deploy steps render manifests with
  (the host's, see :func:`kubectl_source`);
- ``edgeloop-training`` (``pipelines/training.Dockerfile``): edgeloop-pipeline plus torch for the CPU
  (train-model, export-onnx, the TrainingRuntime);
- ``edgeloop-builder`` (``pipelines/builder.Dockerfile``): buildah, for the in-cluster build of the
  serving image (non-root).

A context holds whole packages laid out as installed (``edgeloop/...``), read from the installed
package, so it is the same from a clone or a wheel. The tag is the sha256 of exactly what goes
into the image: every context file (path and bytes) and the build arguments. An unchanged image
keeps its tag, so a second ``make images`` builds nothing.

``make images`` (:func:`build_images`) builds with docker or podman (whichever works), labels each
image with its content hash, writes it as an OCI archive under ``build/images/`` and records name,
tag, digest and size in ``build/images/index.json``; ``edgeloop deploy render --images`` and
``edgeloop pipeline compile|submit|schedule --images`` pin image references by that digest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeloop.core.errors import EdgeloopError

DOCKERFILE = "edgeloop/serving/Dockerfile"
EXCLUDE_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "compiled"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo"}
DEFAULT_REGISTRY = "ghcr.io/edgeloop"
DEFAULT_REPOSITORY = f"{DEFAULT_REGISTRY}/edgeloop-serving"
LOCAL_REGISTRY = "localhost"
#: The label every image carries: the content hash its tag was made from.
HASH_LABEL = "io.edgeloop.content-hash"
#: The pipeline image's label: the sha256 of the kubectl it holds ("none": built without one).
KUBECTL_LABEL = "io.edgeloop.kubectl-sha256"
PUBLIC_BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
#: What `make base-image` builds from Debian packages when no registry is reachable.
DEBIAN_BASE_IMAGE = "localhost/edgeloop-base:bookworm-py3.11"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI_INDEX = "https://pypi.org/simple"


class ImageBuildError(EdgeloopError):
    """An image could not be built; the message names the image, the engine and the fix."""


# -- what goes into each image ----------------------------------------------------------------------------------------
def _package_dir(module: str) -> Path:
    from importlib import resources

    return Path(str(resources.files(module)))


def serving_image_sources() -> dict[str, Path]:
    """Path in the build context -> where it is installed: the packages the serving image holds."""
    import edgeloop

    return {
        "edgeloop/__init__.py": Path(edgeloop.__file__),
        "edgeloop/core": _package_dir("edgeloop.core"),
        "edgeloop/serving": _package_dir("edgeloop.serving"),
    }


#: Sub-packages the pipeline image holds: everything but the test kit.
PIPELINE_PACKAGES = (
    "commands",
    "core",
    "local",
    "schemas",
    "components",
    "pipelines",
    "serving",
    "stream",
    "monitoring",
    "deploy",
    "manifests",
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pipeline_image_sources() -> dict[str, Path]:
    """The whole package (less the test kit) plus the pinned dependency set of the repository."""
    import edgeloop

    root = Path(edgeloop.__file__).parent
    out: dict[str, Path] = {"edgeloop/__init__.py": root / "__init__.py", "edgeloop/cli.py": root / "cli.py"}
    for sub in (p.name for p in sorted(root.iterdir()) if p.is_dir() and (p / "__init__.py").exists()):
        if sub not in ("testing",):
            out[f"edgeloop/{sub}"] = root / sub
    for sub in PIPELINE_PACKAGES:
        out.setdefault(f"edgeloop/{sub}", _package_dir(f"edgeloop.{sub}"))
    constraints = _repo_root() / "requirements" / "constraints.txt"
    if constraints.exists():  # a checkout; a wheel has no constraints and cannot build this image
        out["requirements/constraints.txt"] = constraints
    return out


def builder_image_sources() -> dict[str, Path]:
    return {
        "edgeloop/pipelines/builder.Dockerfile": _package_dir("edgeloop.pipelines") / "builder.Dockerfile"
    }


def training_image_sources() -> dict[str, Path]:
    """Only its Dockerfile: the rest is the edgeloop-pipeline image it extends (a build argument)."""
    path = _package_dir("edgeloop.pipelines") / "training.Dockerfile"
    return {"edgeloop/pipelines/training.Dockerfile": path}


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str  # path inside the context
    sources: Callable[[], dict[str, Path]]
    torch: bool = False  # takes the TORCH_* build arguments
    build_args: tuple[tuple[str, str], ...] = ()
    default: bool = True  # built by a plain `make images`
    parent: str | None = None  # an image of IMAGES it extends (build argument PIPELINE_IMAGE)
    kubectl: bool = False  # takes KUBECTL_SHA256 and the `kubectl` build context


IMAGES: dict[str, ImageSpec] = {
    "edgeloop-serving": ImageSpec("edgeloop-serving", DOCKERFILE, serving_image_sources),
    # The edge-gpu overlay's server: ONNX Runtime with CUDA/cuDNN from PyPI (~2 GB); on request only
    # (`edgeloop images build --only edgeloop-serving-gpu`). onnxruntime-gpu trails onnxruntime by a release.
    "edgeloop-serving-gpu": ImageSpec(
        "edgeloop-serving-gpu",
        DOCKERFILE,
        serving_image_sources,
        build_args=(("ORT_REQUIREMENT", "onnxruntime-gpu[cuda,cudnn]==1.31.1"),),
        default=False,
    ),
    "edgeloop-pipeline": ImageSpec(
        "edgeloop-pipeline", "edgeloop/pipelines/Dockerfile", pipeline_image_sources, kubectl=True
    ),
    "edgeloop-training": ImageSpec(
        "edgeloop-training",
        "edgeloop/pipelines/training.Dockerfile",
        training_image_sources,
        torch=True,
        parent="edgeloop-pipeline",
    ),
    "edgeloop-builder": ImageSpec(
        "edgeloop-builder", "edgeloop/pipelines/builder.Dockerfile", builder_image_sources
    ),
}


# -- contexts and content hashes --------------------------------------------------------------------------------------
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


def content_hash(
    sources: Mapping[str, Path] | None = None,
    files: Mapping[str, Path] | None = None,
    build_args: Mapping[str, str] | None = None,
) -> str:
    """sha256 over (path, bytes) of every context file and the build arguments: the image tag's source."""
    h = hashlib.sha256()
    for rel, path in (files if files is not None else context_files(sources)).items():
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for key, value in sorted((build_args or {}).items()):
        h.update(f"--build-arg {key}={value}\0".encode())
    return h.hexdigest()


def _tar_bytes(files: Mapping[str, Path]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for rel, path in files.items():
            info = tarfile.TarInfo(rel)
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_context(
    out: Path,
    repository: str = DEFAULT_REPOSITORY,
    sources: Mapping[str, Path] | None = None,
    dockerfile: str = DOCKERFILE,
    build_args: Mapping[str, str] | None = None,
) -> BuildContext:
    """A reproducible ``.tar.gz`` of the context (sorted, zeroed mtimes/owners) at ``out``."""
    files = context_files(sources)
    if dockerfile not in files:
        raise FileNotFoundError(f"{dockerfile} is missing from the build context: the image cannot be built")
    digest = content_hash(files=files, build_args=build_args)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(_tar_bytes(files))
    return BuildContext(
        archive=str(out), content_hash=digest, image=f"{repository}:{digest[:16]}", files=len(files)
    )


# -- registries -------------------------------------------------------------------------------------------------------
_MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
)


def _registry_get(
    image: str, path: str, timeout_s: float, accept: str = _MANIFEST_TYPES, method: str = "GET"
):
    """One anonymous (bearer-token if asked) request to the OCI distribution API of ``image``'s registry."""
    import httpx

    ref = image.partition("@")[0].rpartition(":")[0] if "@" not in image else image.partition("@")[0]
    host, _, name = ref.partition("/")
    url = f"https://{host}/v2/{name}/{path}"
    r = httpx.request(method, url, headers={"Accept": accept}, timeout=timeout_s, follow_redirects=True)
    if r.status_code == 401 and "bearer" in r.headers.get("www-authenticate", "").lower():
        params = dict(p.split("=", 1) for p in r.headers["www-authenticate"][7:].replace('"', "").split(","))
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
        r = httpx.request(
            method,
            url,
            headers={"Accept": accept, "Authorization": f"Bearer {tok}"},
            timeout=timeout_s,
            follow_redirects=True,
        )
    return r


def _has_registry(image: str) -> bool:
    ref, _, tag = image.rpartition(":")
    host = ref.partition("/")[0]
    return bool(tag) and "." in host


def registry_content_hash(image: str, timeout_s: float = 10.0) -> str | None:
    """The :data:`HASH_LABEL` of the image a tag points at now ("" if the tag has no such label,
    None if the tag does not exist or the registry cannot tell)."""
    import httpx

    if not _has_registry(image):
        return None
    tag = image.rpartition(":")[2]
    try:
        r = _registry_get(image, f"manifests/{tag}", timeout_s)
        if r.status_code != 200:
            return None
        manifest = r.json()
        if "manifests" in manifest:  # an index: every platform carries the same label; read the first
            r = _registry_get(image, f"manifests/{manifest['manifests'][0]['digest']}", timeout_s)
            manifest = r.json()
        cfg = _registry_get(image, f"blobs/{manifest['config']['digest']}", timeout_s, accept="*/*").json()
    except (httpx.HTTPError, KeyError, ValueError, IndexError):
        return None
    return str((cfg.get("config") or {}).get("Labels", {}).get(HASH_LABEL, ""))


def needs_build(image: str, expected_hash: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Whether the in-cluster build must run: an existing tag is reused only if its image carries the
    content hash the tag names (whoever pushed the tag first does not decide what runs)."""
    found = registry_content_hash(image, timeout_s)
    if found == expected_hash:
        return False, f"{image} exists and carries {HASH_LABEL}={expected_hash[:16]}...: reused"
    if found is None:
        return True, f"{image} not found (or the registry cannot tell): build"
    return True, f"{image} exists but its {HASH_LABEL} is {found[:16] or 'missing'}: rebuilt and overwritten"


# -- container engines ------------------------------------------------------------------------------------------------
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


def container_engine(tools: tuple[str, ...] = ("docker", "podman")) -> str:
    """The first of ``tools`` that works here (a docker CLI without a daemon does not count)."""
    why = []
    for tool in tools:
        ok, reason = _works(tool)
        if ok:
            return tool
        why.append(reason)
    raise ImageBuildError(
        "no working container engine: " + "; ".join(why) + ". Install podman (`make setup` does, where apt "
        "is available) or start a Docker daemon."
    )


def _run(cmd: list[str], what: str, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{what}: timed out after {timeout_s} s ({' '.join(cmd[:3])} ...)") from e
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise ImageBuildError(f"{what} failed ({' '.join(cmd[:2])} exit {r.returncode}):\n{tail}")
    return r


def image_present(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode == 0


def _image_label(engine: str, image: str, label: str) -> str:
    r = subprocess.run(
        [engine, "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else ""


def use_project_engine_config(root: Path | None = None) -> None:
    """podman reads the project's configuration (``.tools/containers``, written by ``make setup``: runc,
    storage under .tools/) unless CONTAINERS_CONF / CONTAINERS_STORAGE_CONF are set already."""
    directory = (root or _repo_root()) / ".tools" / "containers"
    for var, name in (("CONTAINERS_CONF", "containers.conf"), ("CONTAINERS_STORAGE_CONF", "storage.conf")):
        if not os.environ.get(var) and (directory / name).exists():
            os.environ[var] = str(directory / name)


def tag_image(engine: str, image: str, ref: str) -> None:
    """Give ``image`` the name ``ref`` too (a local run of a pipeline that names ``ref``). The image
    ``ref`` named before is removed if that leaves it without a name (a superseded local build)."""
    before = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    _run([engine, "tag", image, ref], f"tagging {image} as {ref}")
    old = before.stdout.strip() if before.returncode == 0 else ""
    now = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    if old and old != now.stdout.strip():  # refused while another name or a container still uses it
        subprocess.run([engine, "rmi", old], capture_output=True)


@dataclass
class EngineApi:
    """A Docker API endpoint: ``host`` is the ``DOCKER_HOST`` value; ``close`` ends it where it is ours
    (the ``podman system service`` started for it; a daemon's socket has none)."""

    host: str
    close: Callable[[], None] | None = None


@contextlib.contextmanager
def docker_api(engine: str, timeout_s: float = 30.0) -> Iterator[EngineApi]:
    """A Docker API endpoint for clients such as kfp's DockerRunner: DOCKER_HOST if set, docker's own
    socket with docker, else ``podman system service`` on a socket of its own, stopped on exit."""
    if os.environ.get("DOCKER_HOST"):
        yield EngineApi(os.environ["DOCKER_HOST"])
        return
    if engine == "docker":
        yield EngineApi("unix:///var/run/docker.sock")
        return
    with tempfile.TemporaryDirectory(prefix="edgeloop-podman-") as tmp:
        sock = Path(tmp) / "podman.sock"
        log = (Path(tmp) / "service.log").open("w")
        proc = subprocess.Popen(
            [engine, "system", "service", "--time=0", f"unix://{sock}"], stdout=log, stderr=subprocess.STDOUT
        )

        def close() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        try:
            deadline = time.monotonic() + timeout_s
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise ImageBuildError(
                        f"`{engine} system service` did not open its socket {sock} within {timeout_s:.0f} s: "
                        + (Path(tmp) / "service.log").read_text()[-1000:]
                    )
                time.sleep(0.1)
            yield EngineApi(f"unix://{sock}", close)
        finally:
            close()
            log.close()


# -- the base image ---------------------------------------------------------------------------------------------------
def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian mirror apt uses here (deb822 ``URIs:`` or a one-line ``deb`` entry)."""
    files = sorted((sources_dir / "sources.list.d").glob("*")) + [sources_dir / "sources.list"]
    for f in files:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "debian" in line and "security" not in line:
                    return words[1]
                if words[:1] == ["deb"] and "debian" in line and "security" not in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def build_base_image(engine: str, image: str = DEBIAN_BASE_IMAGE, mirror: str | None = None) -> str:
    """A ``python:3.11-slim``-equivalent from Debian bookworm's packages (debootstrap; needs root),
    for machines that cannot pull from public registries. A no-op if ``image`` exists."""
    if image_present(engine, image):
        return image
    if not shutil.which("debootstrap"):
        raise ImageBuildError(
            "debootstrap is missing: `make setup` installs it (apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root: run `make base-image` as root, or pass BASE_IMAGE=...")
    with tempfile.TemporaryDirectory(prefix="edgeloop-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                "bookworm",
                str(rootfs),
                mirror or apt_mirror(),
            ],
            "debootstrap",
            timeout_s=1800,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        r = subprocess.run(
            [engine, "import", "--change", 'CMD ["/bin/bash"]', "-", image],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
        tar.wait()
        if r.returncode != 0 or tar.returncode != 0:
            raise ImageBuildError(f"{engine} import of the Debian base failed: {r.stderr.strip()[-500:]}")
    return image


def resolve_base_image(engine: str, requested: str | None) -> str:
    """``requested`` if given; else the public python image if present or pullable; else the Debian base
    (built here on first use)."""
    if requested:
        return requested
    if image_present(engine, PUBLIC_BASE_IMAGE):
        return PUBLIC_BASE_IMAGE
    if image_present(engine, DEBIAN_BASE_IMAGE):
        return DEBIAN_BASE_IMAGE
    if (
        subprocess.run([engine, "pull", "-q", PUBLIC_BASE_IMAGE], capture_output=True, timeout=600).returncode
        == 0
    ):
        return PUBLIC_BASE_IMAGE
    return build_base_image(engine)


# -- torch for the pipeline image -------------------------------------------------------------------------------------
#: Where a local simple index (the `wheels` build context's ``simple/``) appears inside the build.
WHEELS_MOUNT = "/wheels"


@dataclass
class TorchSource:
    index_url: str
    requirement: str
    wheels: str = ""  # a local directory of wheels or a simple index's root (build context `wheels`)
    note: str = ""
    extra_index_url: str = ""  # e.g. file:///wheels/simple: a local index inside the `wheels` context

    def build_args(self) -> dict[str, str]:
        args = {"TORCH_INDEX_URL": self.index_url, "TORCH_REQUIREMENT": self.requirement}
        if self.extra_index_url:
            args["TORCH_EXTRA_INDEX_URL"] = self.extra_index_url
        return args


def pinned_torch(constraints: Path | None = None) -> str:
    """``torch==X torchvision==Y`` as pinned in requirements/constraints.txt."""
    path = constraints or _repo_root() / "requirements" / "constraints.txt"
    pins = [ln.strip() for ln in path.read_text().splitlines() if ln.startswith(("torch==", "torchvision=="))]
    return " ".join(sorted(pins))


def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s) as r:  # noqa: S310 - https only
            return r.status == 200
    except (OSError, ValueError):
        return False


def _pip_config(suffix: str, env: str) -> list[str]:
    """The values of one pip setting on this machine (``env`` and every ``pip config`` scope), in order."""
    values = os.environ.get(env, "").split()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(
            ["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30
        )
        for line in r.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(suffix):
                values += value.strip("'\"").split()
    return list(dict.fromkeys(values))


def _pip_find_links() -> list[Path]:
    """The wheel directories this machine's pip configuration points at (PIP_FIND_LINKS, pip config)."""
    dirs = [Path(d.removeprefix("file://")) for d in _pip_config("find-links", "PIP_FIND_LINKS")]
    return [d for d in dirs if d.is_dir()]


def _pip_local_indexes() -> list[Path]:
    """The ``simple/`` directories of the local (file://) indexes pip uses here (PIP_EXTRA_INDEX_URL,
    PIP_INDEX_URL, pip config)."""
    urls = _pip_config("index-url", "PIP_INDEX_URL") + os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    dirs = [Path(u.removeprefix("file://")) for u in dict.fromkeys(urls) if u.startswith("file://")]
    return [d for d in dirs if d.is_dir()]


def _index_wheel(simple: Path, pin: str) -> Path | None:
    """The cp311 Linux wheel a local simple index offers for ``name==version``, if its link stays inside
    the index's parent directory (what the build context holds)."""
    name, _, version = pin.partition("==")
    page = simple / name / "index.html"
    if not page.is_file():
        return None
    root = simple.parent.resolve()
    for href in re.findall(r'href="([^"#]+)', page.read_text(errors="replace")):
        wheel = (page.parent / urllib.request.url2pathname(href)).resolve()
        fname = wheel.name
        if (
            fname.startswith((f"{name}-{version}-", f"{name}-{version}+"))
            and "cp311" in fname
            and "x86_64" in fname
            and wheel.is_file()
            and wheel.is_relative_to(root)
        ):
            return wheel
    return None


def torch_source(
    index_url: str | None = None, wheels: str | None = None, requirement: str | None = None
) -> TorchSource:
    """Where the training image's torch comes from, in this order: the given index/wheels; PyTorch's CPU
    index if it answers; CPU builds of both torch and torchvision in a wheelhouse of pip's find-links;
    the pinned torch and torchvision (PyPI's CUDA builds) in a local index pip uses here, the rest from PyPI.
    (PyPI's torchvision is built for PyPI's CUDA torch: with a CPU torch it does not import.)"""
    requirement = requirement or pinned_torch()
    if wheels or index_url:
        return TorchSource(index_url or TORCH_CPU_INDEX, requirement, wheels or "")
    if _reachable(TORCH_CPU_INDEX):
        return TorchSource(TORCH_CPU_INDEX, requirement)
    for d in _pip_find_links():
        torch = sorted(d.glob("torch-*+cpu-cp311-*.whl"))
        vision = sorted(d.glob("torchvision-*+cpu-cp311-*.whl"))
        if torch and vision:
            versions = [w.name.split("-")[1] for w in (torch[-1], vision[-1])]
            return TorchSource(
                PYPI_INDEX,
                f"torch=={versions[0]} torchvision=={versions[1]}",
                str(d),
                note=f"{TORCH_CPU_INDEX} is unreachable: torch {versions[0]} and torchvision {versions[1]} from "
                f"the local wheelhouse {d} instead of the pinned {requirement}",
            )
    pins = requirement.split()
    for simple in _pip_local_indexes():
        if all(_index_wheel(simple, pin) for pin in pins):
            # PyPI first, the local index as the extra one: for the same file pip takes the extra index's
            # (its candidates come last and pip keeps the last of equals), so nothing local is downloaded.
            return TorchSource(
                PYPI_INDEX,
                requirement,
                str(simple.parent),
                note=f"{TORCH_CPU_INDEX} is unreachable: {requirement} (PyPI's CUDA builds) from the local index "
                f"{simple}, the rest from PyPI. The image carries the CUDA libraries (~5 GB more) and trains "
                "on the CPU where no GPU is present.",
                extra_index_url=f"file://{WHEELS_MOUNT}/{simple.name}",
            )
    raise ImageBuildError(
        f"no torch and torchvision for the training image here: {TORCH_CPU_INDEX} does not answer, no "
        "wheelhouse of pip's find-links holds torch-*+cpu and torchvision-*+cpu wheels and no local index "
        f"of pip's holds {requirement}. Pass TORCH_INDEX_URL=<an index with CPU wheels> or "
        "TORCH_WHEELS=<a directory with both>; TORCH_INDEX_URL=https://pypi.org/simple builds PyPI's CUDA "
        "torch (~6 GB image)."
    )


# -- kubectl for the pipeline image ------------------------------------------------------------------------------------
@dataclass
class KubectlSource:
    path: str  # the binary ("" for none)
    sha256: str  # "none" for none
    note: str = ""

    def build_args(self) -> dict[str, str]:
        return {"KUBECTL_SHA256": self.sha256}


def kubectl_source(path: str | None = None) -> KubectlSource:
    """The kubectl the pipeline image gets: ``path``, else the one on this machine's PATH; none (with a
    note) if there is none. Debian has no kubectl package and its release downloads may be unreachable,
    so the binary comes from the host, checked by its sha256 (part of the image's content hash)."""
    found = path or shutil.which("kubectl")
    if not found:
        return KubectlSource(
            "",
            "none",
            note="no kubectl on PATH: edgeloop-pipeline is built without it, and its deploy steps (deploy-model, "
            "edgeloop deploy render) fail; pass KUBECTL=<a kubectl >= 1.27 binary for linux/amd64>",
        )
    binary = Path(found).resolve()
    if not binary.is_file():
        raise ImageBuildError(f"kubectl {found} is not a file")
    try:
        r = subprocess.run([str(binary), "version", "--client"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageBuildError(f"kubectl {found} does not run here ({e}): pass another with KUBECTL=") from e
    if r.returncode != 0 or "Kustomize" not in r.stdout:
        raise ImageBuildError(
            f"kubectl {found} gives no client and kustomize version (exit {r.returncode}): "
            f"{(r.stderr or r.stdout).strip()[-300:]}; pass a kubectl >= 1.27 with KUBECTL="
        )
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    return KubectlSource(str(binary), digest, note=f"kubectl {binary} ({' '.join(r.stdout.split()[:3])})")


# -- building ---------------------------------------------------------------------------------------------------------
@dataclass
class BuiltImage:
    name: str
    image: str  # <repository>/<name>:<tag>
    content_hash: str
    digest: str  # the manifest digest of the OCI archive
    archive: str
    size_bytes: int
    status: str  # built | cached
    seconds: float
    build_args: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def pinned(self) -> str:
        return f"{self.image.rpartition(':')[0]}@{self.digest}"


def archive_digest(archive: Path) -> str:
    """The manifest digest recorded in an OCI archive's index.json (kept by ``skopeo copy --preserve-digests``)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageBuildError(f"{archive} has no index.json: not an OCI archive")
        index = json.load(member)
    return str(index["manifests"][0]["digest"])


#: Debian's bundle of the CAs this machine trusts (with any a company added by update-ca-certificates)
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _cacert() -> str | None:
    """The CA bundle the builds' pip should trust, as this machine's pip does: PIP_CERT, SSL_CERT_FILE,
    REQUESTS_CA_BUNDLE, pip's configured ``cert``, else the system bundle. Many networks intercept TLS
    with their own CA, which the base image's bundle lacks; the bundle goes in as a build secret only."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        *_pip_config(".cert", "PIP_CERT"),
        str(SYSTEM_CA_BUNDLE),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def build_arguments(
    spec: ImageSpec,
    base_image: str,
    *,
    torch: TorchSource | None = None,
    parent_image: str | None = None,
    kubectl: KubectlSource | None = None,
) -> dict[str, str]:
    """The build arguments of ``spec``'s image (part of its content hash, hence of its tag)."""
    args = {"BASE_IMAGE": base_image, **dict(spec.build_args)}
    if spec.parent:
        if not parent_image:
            raise ImageBuildError(f"{spec.name} extends {spec.parent}: build that first")
        args = {"PIPELINE_IMAGE": parent_image}  # carries the parent's content hash in its tag
    if spec.torch:
        if torch is None:
            raise ImageBuildError(f"{spec.name} needs a torch source")
        args |= torch.build_args()
    if spec.kubectl:
        args |= (kubectl or kubectl_source()).build_args()
    return args


def build_image(
    spec: ImageSpec,
    out_dir: Path,
    *,
    engine: str,
    base_image: str,
    registry: str = LOCAL_REGISTRY,
    torch: TorchSource | None = None,
    parent_image: str | None = None,
    kubectl: KubectlSource | None = None,
    cacert: str | None = None,
    log: Callable[[str], None] = print,
    save: bool = True,
) -> BuiltImage:
    """Build one image (unless an image with the same content hash and its archive are there already).
    ``save=False``: no OCI archive (and no digest): the image is for this machine's engine only."""
    if spec.kubectl:
        kubectl = kubectl or kubectl_source()
    args = build_arguments(spec, base_image, torch=torch, parent_image=parent_image, kubectl=kubectl)
    files = context_files(spec.sources())
    if spec.dockerfile not in files:
        raise ImageBuildError(f"{spec.dockerfile} is missing from {spec.name}'s context")
    digest_of_content = content_hash(files=files, build_args=args)
    tag = digest_of_content[:16]
    image = f"{registry}/{spec.name}:{tag}"
    archive = Path(out_dir) / f"{spec.name}-{tag}.oci.tar"
    t0 = time.perf_counter()
    if (
        (archive.exists() or not save)
        and image_present(engine, image)
        and _image_label(engine, image, HASH_LABEL) == digest_of_content
    ):
        status = "cached"
    else:
        log(f"building {image} with {engine} (base {base_image}) ...")
        with (
            tempfile.TemporaryDirectory(prefix=f"{spec.name}-") as tmp,
            tempfile.TemporaryDirectory(prefix="edgeloop-kubectl-") as kubectl_dir,
        ):
            with tarfile.open(fileobj=io.BytesIO(_tar_bytes(files))) as tar:
                tar.extractall(tmp, filter="data")
            # host network for RUN steps: no bridge, so no iptables rules or forwarding left behind
            cmd = [engine, "build", "--network", "host", "-f", f"{tmp}/{spec.dockerfile}", "-t", image]
            cmd += ["--label", f"{HASH_LABEL}={digest_of_content}"]
            cmd += ["--label", f"org.opencontainers.image.title={spec.name}"]
            for k, v in args.items():
                cmd += ["--build-arg", f"{k}={v}"]
            cert = cacert if cacert is not None else _cacert()
            if cert:
                cmd += ["--secret", f"id=cacert,src={cert}"]
            if spec.torch and torch and torch.wheels:
                cmd += ["--build-context", f"wheels={torch.wheels}"]
            if spec.kubectl and kubectl and kubectl.path:
                shutil.copyfile(kubectl.path, Path(kubectl_dir) / "kubectl")
                cmd += ["--build-context", f"kubectl={kubectl_dir}"]
            cmd.append(tmp)
            _run(cmd, f"building {spec.name}")
        status = "built"
        _remove_older_tags(engine, f"{registry}/{spec.name}", keep=tag)
    if save and status == "built":
        archive.parent.mkdir(parents=True, exist_ok=True)
        for old in archive.parent.glob(f"{spec.name}-*.oci.tar"):
            old.unlink()
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _run([engine, "save", "--format", "oci-archive", "-o", str(partial), image], f"saving {spec.name}")
        partial.rename(archive)
    size = int(
        subprocess.run(
            [engine, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True
        ).stdout.strip()
        or 0
    )
    return BuiltImage(
        name=spec.name,
        image=image,
        content_hash=digest_of_content,
        digest=archive_digest(archive) if save else "",
        archive=str(archive) if save else "",
        size_bytes=size,
        status=status,
        seconds=round(time.perf_counter() - t0, 1),
        build_args=args,
        note=torch.note if spec.torch and torch else kubectl.note if spec.kubectl and kubectl else "",
    )


def _remove_older_tags(engine: str, repository: str, keep: str) -> None:
    """Untag superseded builds of ``repository`` (their layers stay while the build cache uses them)."""
    r = subprocess.run(
        [engine, "images", "--format", "{{.Repository}}:{{.Tag}}", repository], capture_output=True, text=True
    )
    for ref in r.stdout.split():
        if ref.startswith(f"{repository}:") and not ref.endswith(f":{keep}"):
            subprocess.run([engine, "rmi", ref], capture_output=True)


INDEX_NAME = "index.json"


DEFAULT_IMAGES = tuple(n for n, spec in IMAGES.items() if spec.default)


def build_images(
    out_dir: Path,
    names: tuple[str, ...] = DEFAULT_IMAGES,
    *,
    engine: str | None = None,
    base_image: str | None = None,
    torch: TorchSource | None = None,
    kubectl: KubectlSource | None = None,
    log: Callable[[str], None] = print,
    save: bool = True,
) -> list[BuiltImage]:
    """``make images``: each image (and the image it extends), tagged by content hash, saved under
    ``out_dir`` with an index. An image that needs torch is skipped, with the reason, when no CPU build
    of torch is reachable (see :func:`torch_source`); it is then left out of the index. The pipeline
    image holds ``kubectl`` (default: :func:`kubectl_source`'s), or none, with a note, if there is none."""
    unknown = set(names) - set(IMAGES)
    if unknown:
        raise ImageBuildError(f"unknown image(s) {sorted(unknown)}; known: {sorted(IMAGES)}")
    wanted = set(names) | {IMAGES[n].parent for n in names if IMAGES[n].parent}
    order = [n for n in IMAGES if n in wanted]
    engine = engine or container_engine()
    base = resolve_base_image(engine, base_image)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    done: dict[str, BuiltImage] = {}
    torch_error = ""
    for name in order:
        spec = IMAGES[name]
        if spec.torch and torch is None and not torch_error:
            try:
                torch = torch_source()
                if torch.note:
                    log(f"note: {torch.note}")
            except ImageBuildError as e:
                torch_error = str(e)
        if spec.torch and torch is None:
            log(f"skipped {name}: {torch_error}")
            index.pop(name, None)
            done[name] = BuiltImage(name, "", "", "", "", 0, "skipped", 0.0, note=torch_error)
            continue
        if spec.kubectl and kubectl is None:
            kubectl = kubectl_source()
            if not kubectl.path:
                log(f"note: {kubectl.note}")
        parent = done[spec.parent].image if spec.parent else None
        b = build_image(
            spec,
            out_dir,
            engine=engine,
            base_image=base,
            torch=torch,
            parent_image=parent,
            kubectl=kubectl,
            log=log,
            save=save,
        )
        log(f"{b.status:>7} {b.image}  {b.digest[:19]}  {b.size_bytes / 1e6:.0f} MB  {b.seconds:.0f} s")
        done[name] = b
        if save:
            index[name] = {**asdict(b), "pinned": b.pinned}
            index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if save:
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [done[n] for n in order]


def read_index(path: Path) -> dict[str, dict]:
    """``build/images/index.json`` (name -> record); an error naming ``make images`` if it is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.exists():
        raise ImageBuildError(f"{path} not found: run `make images` first")
    return json.loads(path.read_text())


# -- local builds from a pipeline run ---------------------------------------------------------------------------------
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
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(context.archive) as tar:
                tar.extractall(tmp, filter="data")
            base = _local_base(tool)
            cmd = [
                tool,
                "build" if tool != "buildah" else "bud",
                "--network",
                "host",
                "-t",
                context.image,
                "-f",
                f"{tmp}/{DOCKERFILE}",
            ]
            cmd += ["--label", f"{HASH_LABEL}={context.content_hash}"]
            if base:
                cmd += ["--build-arg", f"BASE_IMAGE={base}"]
            cert = _cacert()
            if cert:
                cmd += ["--secret", f"id=cacert,src={cert}"]
            r = subprocess.run([*cmd, tmp], capture_output=True, text=True)
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
            + ". The build context is kept; the cluster pipeline builds it with buildah.",
        )
    if record and result.status == "built":
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(result.as_dict()))
    return result


def _local_base(tool: str) -> str | None:
    """The base image a local build can use without a registry, if one is here (else the Dockerfile's)."""
    if tool == "buildah":
        return None
    for candidate in (PUBLIC_BASE_IMAGE, DEBIAN_BASE_IMAGE):
        if image_present(tool, candidate):
            return candidate
    return None
