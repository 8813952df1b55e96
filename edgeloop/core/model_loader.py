"""The one way to get an exported model ready to run: fetch it, verify it, open it in ONNX Runtime.

The model server, the stream processor's in-process predictor, drift monitoring, the
staging evaluation and the registry's downloads all come through here, so there is one
integrity rule (:func:`check_integrity`): a model is opened only when its card records a
sha256 for ``model.onnx`` and every file the card lists is present with its recorded
sha256. Anything else raises :class:`~edgeloop.core.errors.IntegrityError`; nothing is
loaded with a warning.

    fetch_model("models:/inspection@champion", settings)  # -> FetchedModel (a local directory)
    verify_model(directory)                               # -> VerifiedModel (card + verified bytes)
    open_model(directory, OrtSettings(providers=["cpu"])) # -> OpenModel (verified, with a session)

A model is identified by its digest (:meth:`ModelCard.digest`: the card, which lists every
file's sha256). Where a digest is pinned (``expected_digest``: the registry's tag on a
``models:/`` version, the InferenceService's annotation, ``edgeloop serve --expected-digest``)
a card that differs from it in anything, labels and preprocessing included, is refused.

A model URI is a local directory (or ``file://``), an ``az://container/prefix`` blob
prefix, or a registered version ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS``. A registered
version is an MLflow model (:mod:`edgeloop.pipelines.registry`): ``MLmodel`` (ONNX flavor), its
environment files and input example next to edgeloop's files; it is fetched whole and verified like
any model directory, and its ``MLmodel`` must make MLflow load the verified ``model.onnx``
(``mlflow.pyfunc.load_model`` on a version edgeloop accepts runs the bytes edgeloop checked).
Imports nothing heavy at module level: onnxruntime when a session is opened, the Azure
client for ``az://``, mlflow only to resolve ``models:/`` (the serving image has no torch).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import (
    IntegrityError,
    InvalidModelError,
    ModelFetchError,
    ModelSessionError,
)
from edgeloop.core.model_card import (
    CLASSIFICATION,
    MODEL_CARD_FILE,
    MODEL_FILE,
    ModelCard,
    normalize_digest,
    sha256_bytes,
    sha256_file,
)

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)

REGISTRY_SCHEME = "models:/"
BLOB_SCHEME = "az://"
# The model version tag the registry writes at registration (pipelines.registry.MODEL_DIGEST).
REGISTRY_DIGEST_TAG = "edgeloop.model_digest"
MLMODEL_FILE = "MLmodel"  # an MLflow model's descriptor, next to the card in a registered version
_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


# --------------------------------------------------------------------------- fetch
@dataclass(frozen=True)
class FetchedModel:
    """A model made available as a local directory; not verified yet (:func:`verify_model` does that)."""

    uri: str
    directory: Path
    registry_version: str | None = None  # the MLflow version number, when the URI named the registry
    alias: str | None = None  # the alias in a ``models:/NAME@ALIAS`` URI
    digest: str | None = None  # the digest the registry recorded for that version, when it did


def fetch_model(
    uri: str | Path, settings: Settings | None = None, cache_dir: Path | None = None
) -> FetchedModel:
    """Make the model named by ``uri`` available as a local directory (``model.onnx`` + its card).

    ``az://`` and ``models:/`` need ``settings`` (the endpoints). Downloads go under ``cache_dir``
    (a new temporary directory when None). A registered version is immutable, so with a
    ``cache_dir`` it is kept at ``cache_dir/NAME/VERSION`` and reused; it is verified again
    whenever it is opened, like anything else.
    """
    text = str(uri)
    if text.startswith(REGISTRY_SCHEME):
        return _from_registry(text, _need_settings(settings, text), cache_dir)
    if text.startswith(BLOB_SCHEME):
        return _from_blob(text, _need_settings(settings, text), _fresh_dir(cache_dir, "az-"))
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise ModelFetchError(
            f"model directory {text} does not exist (expected a directory with {MODEL_FILE} "
            f"and {MODEL_CARD_FILE}, an az:// prefix or a models:/ URI)"
        )
    return FetchedModel(text, find_model_dir(path, text))


def fetch_verified(
    uri: str | Path,
    settings: Settings | None = None,
    cache_dir: Path | None = None,
    expected_digest: str | None = None,
) -> VerifiedModel:
    """:func:`fetch_model`, then :func:`verify_model`: a local model directory that passed the integrity
    rule, and matches ``expected_digest`` and the digest the registry recorded, where there are any."""
    fetched = fetch_model(uri, settings, cache_dir)
    return verify_model(fetched.directory, expected_digest=pinned_digests(fetched, expected_digest))


def pinned_digests(fetched: FetchedModel, expected: str | None = None) -> tuple[str, ...]:
    """Every digest ``fetched`` must match: the one the caller pins and the one its registry version records."""
    return tuple(d for d in (expected, fetched.digest) if d)


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION)."""
    m = _REGISTRY.match(uri)
    if not m or any(part in (".", "..") or "\\" in part for part in m.groups() if part):
        raise ModelFetchError(f"{uri} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    return m.group("name"), m.group("alias"), m.group("version")


def find_model_dir(root: Path, uri: str) -> Path:
    """``root`` itself if it holds a card, else the single sub-directory that does."""
    if (root / MODEL_CARD_FILE).exists():
        return root
    cards = sorted(root.rglob(MODEL_CARD_FILE))
    if len(cards) == 1:
        return cards[0].parent
    if not cards:
        raise ModelFetchError(
            f"{uri} holds no {MODEL_CARD_FILE}: a model needs its card next to {MODEL_FILE}"
        )
    raise ModelFetchError(f"{uri} holds {len(cards)} model cards; point at one model directory")


def _need_settings(settings: Settings | None, uri: str) -> Settings:
    if settings is None:
        raise ModelFetchError(f"{uri} needs edgeloop settings (blob storage / MLflow endpoints)")
    return settings


def _fresh_dir(cache_dir: Path | None, prefix: str) -> Path:
    if cache_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"edgeloop-{prefix}"))
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir))


def _from_blob(uri: str, settings: Settings, dest: Path) -> FetchedModel:
    from edgeloop.core.blob import BlobStore, BlobUri

    u = BlobUri.parse(uri)
    prefix = u.path.rstrip("/") + "/" if u.path else ""
    store = BlobStore.from_settings(settings)
    names = list(store.list(u.container, prefix))
    if not names:
        raise ModelFetchError(f"no blobs under {uri}; expected {MODEL_FILE} and {MODEL_CARD_FILE} there")
    for name in names:
        rel = name[len(prefix) :]
        if not rel:
            continue
        try:
            target = inside(dest, rel, uri)
        except ModelFetchError:
            log.warning("skipping blob %s under %s: its name leads outside the download directory", name, uri)
            continue
        store.download_to(BlobUri(u.container, name), target)
    log.info("downloaded %d files from %s", len(names), uri)
    return FetchedModel(uri, find_model_dir(dest, uri))


def inside(root: Path, rel: str, source: str) -> Path:
    """``root / rel``, refused (:class:`ModelFetchError`) unless it stays inside ``root``: a blob
    or card entry named ``/etc/x`` or ``../x`` must not write or read anywhere else."""
    parts = Path(rel).parts
    target = (root / rel).resolve()
    if Path(rel).is_absolute() or ".." in parts or not target.is_relative_to(root.resolve()):
        raise ModelFetchError(f"{source} holds {rel!r}, a path outside the model directory; refusing it")
    return root / rel


def _from_registry(uri: str, settings: Settings, cache_dir: Path | None) -> FetchedModel:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_registry_uri(uri)
    tracking_uri = settings.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def download(dest: Path) -> Path:
        source = client.get_model_version_download_uri(name, found)
        mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri
        )
        log.info("downloaded %s (version %s) from MLflow", uri, found)
        return dest

    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, str(version))
        )
        found = str(mv.version)
        digest = (getattr(mv, "tags", None) or {}).get(REGISTRY_DIGEST_TAG) or None
        if cache_dir is None:
            directory = download(_fresh_dir(None, "mlflow-"))
        else:
            directory = Path(cache_dir) / name / found
            if not directory.is_dir():
                _settle(download(_fresh_dir(directory.parent, ".partial-")), directory)
    except MlflowException as e:
        raise ModelFetchError(f"cannot fetch {uri} from MLflow at {tracking_uri}: {e.message}") from e
    return FetchedModel(
        uri, find_model_dir(directory, uri), registry_version=found, alias=alias, digest=digest
    )


def _settle(downloaded: Path, final: Path) -> None:
    """Move a complete download to its cache place in one rename (a crash leaves no half copy there)."""
    try:
        os.replace(downloaded, final)
    except OSError:  # another process put the same version there first
        shutil.rmtree(downloaded, ignore_errors=True)


# --------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifiedModel:
    """A model directory that passed :func:`check_integrity`, with the ``model.onnx`` bytes that were checked."""

    directory: Path
    card: ModelCard
    model_bytes: bytes = field(repr=False)

    def session_source(self) -> bytes | Path:
        """What to give ONNX Runtime: the verified bytes (no window to swap the file), or the file's
        path when the card lists other files the graph may reference as external data."""
        return self.model_bytes if set(self.card.files) == {MODEL_FILE} else self.directory / MODEL_FILE


def read_card(directory: Path | str) -> ModelCard:
    """The model card in ``directory``; :class:`InvalidModelError` when it is missing or does not validate."""
    from pydantic import ValidationError

    directory = Path(directory)
    try:
        return ModelCard.load(directory)
    except FileNotFoundError as e:
        raise InvalidModelError(str(e)) from e
    except ValidationError as e:
        raise InvalidModelError(
            f"{MODEL_CARD_FILE} in {directory} is not a valid model card: "
            f"{e.error_count()} problems, first: {e.errors()[0]['msg']}"
        ) from e


def check_integrity(
    card: ModelCard,
    directory: Path,
    model_bytes: bytes | None = None,
    expected_digest: str | Sequence[str] = (),
) -> None:
    """The integrity rule, the only one. Raise :class:`IntegrityError` unless

    * the card's digest equals every pinned ``expected_digest`` (the card was not edited and
      lists the same file digests as the model that was approved);
    * the card records a sha256 for ``model.onnx``, and the file (or ``model_bytes``, read
      from it) has that sha256;
    * every other file the card lists is inside ``directory`` and exists with its recorded sha256;
    * an MLflow ``MLmodel`` next to the card (a registered version) makes MLflow's ONNX and pyfunc
      flavors load ``model.onnx``, the file just verified, and nothing else.
    """
    directory = Path(directory)
    pinned = [expected_digest] if isinstance(expected_digest, str) else list(expected_digest)
    if pinned:
        actual_digest = card.digest()
        for expected in pinned:
            try:
                want = normalize_digest(expected)
            except ValueError as e:
                raise IntegrityError(f"the pinned model digest is malformed: {e}", directory) from e
            if actual_digest != want:
                raise IntegrityError(
                    f"the model's digest is {actual_digest[:12]}..., the deployment pins {want[:12]}...: "
                    "the model card or a file differs from the model that was approved; deploy the "
                    "approved version, or pin the digest of this one after reviewing it",
                    directory,
                )
    if not card.files.get(MODEL_FILE):
        raise IntegrityError(
            f"the model card lists no digest for {MODEL_FILE}, so the model cannot be verified; "
            "export it again (the export records the digests)",
            directory,
        )
    ordered = [MODEL_FILE] + sorted(rel for rel in card.files if rel != MODEL_FILE)
    for rel in ordered:
        try:
            path = inside(directory, rel, "the model card")
        except ModelFetchError as e:
            raise IntegrityError(str(e), directory) from e
        expected = card.files[rel]
        if rel == MODEL_FILE and model_bytes is not None:
            actual = sha256_bytes(model_bytes)
        elif path.is_file():
            actual = sha256_file(path)
        else:
            raise IntegrityError(
                f"{rel} is listed in the model card but missing; fetch the whole model directory again",
                directory,
            )
        if actual != expected:
            raise IntegrityError(
                f"{rel} has sha256 {actual[:12]}..., the model card says {expected[:12]}...: the file was "
                "changed after the model was exported; export or register it again",
                directory,
            )
    if (directory / MLMODEL_FILE).is_file():
        _check_mlmodel(directory)


def _check_mlmodel(directory: Path) -> None:
    """``directory/MLmodel`` is the descriptor ``mlflow.onnx.log_model`` writes and nothing more: the
    onnx and python_function flavors only, both loading ``model.onnx`` (what the card's digest covers)
    through ``mlflow.onnx``, with no code, pickled model or artifacts that MLflow would load or run."""
    import yaml

    def refuse(why: str) -> IntegrityError:
        return IntegrityError(
            f"{MLMODEL_FILE} {why}: the MLflow model was changed after registration; register the model again",
            directory,
        )

    try:
        doc = yaml.safe_load((directory / MLMODEL_FILE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise IntegrityError(
            f"{MLMODEL_FILE} is not a readable MLflow model descriptor: {e}", directory
        ) from e
    flavors = doc.get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict) or not all(isinstance(f, dict) for f in flavors.values()):
        raise IntegrityError(
            f"{MLMODEL_FILE} is not a readable MLflow model descriptor: no flavors", directory
        )
    if set(flavors) != {"onnx", "python_function"}:
        raise refuse(f"has the flavors {sorted(flavors)}, not exactly onnx and python_function")
    loads = {name: flavors[name].get("data") for name in ("onnx", "python_function")}
    wrong = {name: data for name, data in loads.items() if data != MODEL_FILE}
    if wrong:
        raise refuse(f"makes MLflow load {wrong} instead of the verified {MODEL_FILE}")
    pyfunc = flavors["python_function"]
    if pyfunc.get("loader_module") != "mlflow.onnx":
        raise refuse(f"loads through {pyfunc.get('loader_module')!r}, not mlflow.onnx")
    extra = [
        f"{name}.{key}"
        for name, flavor in flavors.items()
        for key in ("code", "python_model", "artifacts", "model_config", "cloudpickle_version")
        if flavor.get(key)
    ]
    if extra:
        raise refuse(f"adds {extra}: code or objects MLflow would load besides {MODEL_FILE}")


def verify_model(
    directory: Path | str, card: ModelCard | None = None, expected_digest: str | Sequence[str] = ()
) -> VerifiedModel:
    """Read the card (unless given) and ``model.onnx``, and apply :func:`check_integrity`.

    Raises :class:`InvalidModelError` for a missing or invalid card, :class:`IntegrityError`
    when the files do not match it or the card does not match a pinned ``expected_digest``.
    """
    directory = Path(directory)
    card = card if card is not None else read_card(directory)
    path = directory / MODEL_FILE
    data = path.read_bytes() if path.is_file() else None
    check_integrity(card, directory, data, expected_digest)
    assert data is not None  # check_integrity refuses a missing model file
    return VerifiedModel(directory, card, data)


# --------------------------------------------------------------------------- open
# Preferred first. TensorRT and CUDA need onnxruntime-gpu; OpenVINO needs onnxruntime-openvino.
DEFAULT_PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
_SHORT = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def provider_name(name: str) -> str:
    """``cuda`` / ``CUDA`` / ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``."""
    return _SHORT.get(name.strip().lower(), name.strip())


def choose_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers that this onnxruntime build has, in order; CPU always last as a fallback."""
    chosen = [
        p for p in (provider_name(n) for n in preferred) if p in available and p != "CPUExecutionProvider"
    ]
    chosen = list(dict.fromkeys(chosen))
    chosen.append("CPUExecutionProvider")
    return chosen


def available_cpus() -> int:
    """The cores this process may use: the CPUs it may run on, capped by a cgroup CPU quota
    (rounded up; a pod limited to 2 CPUs on a 32-core node gets 2)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if math.isfinite(quota) else cpus


def cpu_quota(v2: str = "/sys/fs/cgroup/cpu.max", v1: str = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") -> float:
    """Cores the cgroup CPU quota allows (v2 ``cpu.max``, else v1 CFS); ``inf`` when unlimited or unknown."""
    try:
        quota, period = Path(v2).read_text().split()[:2]
        return math.inf if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path(v1).read_text())
        p = int(Path(v1).with_name("cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return math.inf
    return math.inf if q <= 0 or p <= 0 else q / p


@dataclass
class OrtSettings:
    """Execution providers, threads and graph settings. ``intra_op_threads=0``: one per available core.

    Spinning is off by default: spinning workers burn the cores the event loop needs to
    decode the next requests (measured on 2 cores; turn it on for a dedicated box).
    """

    providers: list[str] = field(default_factory=lambda: list(DEFAULT_PROVIDER_ORDER))
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization: str = "all"  # disable | basic | extended | all

    def session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads or available_cpus()
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.log_severity_level = 3
        return so


def session_layout(settings: OrtSettings, sessions: int) -> tuple[int, OrtSettings]:
    """How many CPU sessions to open side by side and the settings of each: ``sessions`` of them
    (0 = one per usable core, or cores/threads when threads are set), each with cores/N threads
    unless threads are set."""
    cores = available_cpus()
    n = sessions or max(1, cores // (settings.intra_op_threads or 1))
    if n > 1 and not settings.intra_op_threads:
        settings = dataclasses.replace(settings, intra_op_threads=max(1, cores // n))
    return n, settings


class ThreadSessions:
    """Sessions side by side: each thread that runs the model keeps one of its own (handed out
    round-robin on its first run), so N single-threaded sessions work in parallel."""

    def __init__(self, sessions: Sequence[Any]):
        self.sessions = list(sessions)
        self._local = threading.local()
        self._next = itertools.count()

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.sessions[next(self._next) % len(self.sessions)]
        return session


@dataclass
class SessionInfo:
    provider: str  # the provider that runs the model's nodes first
    providers: list[str]  # what the session reports, in priority order
    tried: list[tuple[str, str]]  # (provider that failed, why)


def open_session(model: Path | bytes, settings: OrtSettings) -> tuple[Any, SessionInfo]:
    """An ``InferenceSession`` (from verified bytes, or a path) on the best available provider,
    falling back down the configured order; :class:`ModelSessionError` when none can load it.

    Takes what :meth:`VerifiedModel.session_source` returns: open models with :func:`open_model`.
    """
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    chosen = choose_providers(settings.providers, ort.get_available_providers())
    tried: list[tuple[str, str]] = []
    for i in range(len(chosen)):
        attempt = chosen[i:]
        try:
            sess = ort.InferenceSession(source, sess_options=settings.session_options(), providers=attempt)
        except Exception as e:  # a provider that is present but cannot start (driver, library)
            log.warning(
                "execution provider %s failed (%s: %s); falling back", attempt[0], type(e).__name__, e
            )
            tried.append((attempt[0], f"{type(e).__name__}: {e}"))
            continue
        used = sess.get_providers()
        info = SessionInfo(provider=used[0], providers=used, tried=tried)
        if used[0] != chosen[0]:
            log.warning("wanted %s, running on %s", chosen[0], used[0])
        return sess, info
    raise ModelSessionError(f"no execution provider could load the model: {tried}")


@dataclass
class OpenModel:
    """A verified model with its ONNX Runtime session."""

    directory: Path
    card: ModelCard
    session: Any
    session_info: SessionInfo
    extra_sessions: list[Any] = field(default_factory=list)  # more sessions on the same verified bytes


def open_model(
    directory: Path | str,
    settings: OrtSettings | None = None,
    expected_digest: str | Sequence[str] = (),
    sessions: int = 1,
    tasks: Sequence[str] = (CLASSIFICATION,),
) -> OpenModel:
    """:func:`verify_model`, then :func:`open_session` on the verified bytes (``sessions`` of
    them laid out by :func:`session_layout`).

    Raises :class:`IntegrityError` for a model that fails the integrity rule (or a pinned
    ``expected_digest``), :class:`InvalidModelError` (or its :class:`ModelSessionError`) for one
    that cannot be opened or whose card's task is not in ``tasks`` (what the caller can run).
    """
    verified = verify_model(directory, expected_digest=expected_digest)
    if verified.card.task not in tasks:
        raise InvalidModelError(
            f"the model in {verified.directory} is a {verified.card.task} model: this step takes "
            f"{' or '.join(tasks)} models only (the stream and the model server take detection models too)"
        )
    try:
        n, each = session_layout(settings or OrtSettings(), max(1, sessions))
        opened = [open_session(verified.session_source(), each) for _ in range(n)]
    except ModelSessionError as e:
        raise ModelSessionError(f"ONNX Runtime cannot open the model in {verified.directory}: {e}") from e
    (session, info), extra = opened[0], [s for s, _ in opened[1:]]
    return OpenModel(verified.directory, verified.card, session, info, extra)
