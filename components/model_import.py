"""Bring your own model: an ONNX classifier trained elsewhere becomes an edgeloop model directory.

:func:`import_onnx` validates the graph and rewrites its interface to the one every edgeloop
part reads (the training path's export): input ``images`` float32 ``[N, 3, S, S]`` (normalised
RGB), output ``probabilities`` ``[N, C]`` and, when the model has one, ``embedding`` ``[N, D]``.
Nothing inside the graph changes: the input is renamed, the outputs are ``Identity`` /
``Flatten`` (or, for logits, ``Softmax``) nodes over the named tensors, other outputs are
dropped. It refuses, naming the flag or the fix:

* a file that is not a valid ONNX graph, or an opset ONNX Runtime cannot run;
* an input that is not float32 of rank 4 with 3 channels, a spatial size other than ``--size``;
* a probabilities output whose class count differs from ``--labels``, or whose rows are not
  probabilities (pass ``--softmax`` for logits);
* an embedding output that is not one vector per image; a batch axis that cannot take 2 images.

The card records lineage ``origin=imported`` (source file, its sha256, producer, opset, the
original tensor names). :func:`import_model` then takes the path of a trained model: the
precision choice measured on this machine (fp32 vs a static int8 variant, latency and accuracy
on the dataset's validation split), the monitoring reference profile, the staging evaluation
through the real model server with the gate, and registration as a candidate with lineage
``origin=imported``. Approval, serving and monitoring are the same as for trained models.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.model_card import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    MODEL_FILE,
    PROBS_OUTPUT,
    ModelCard,
    Precision,
)
from edgeloop.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.pipelines.gate import GateThresholds
    from edgeloop.pipelines.registry import Registered
    from edgeloop.pipelines.staging import StagingResult

log = logging.getLogger(__name__)

ORIGIN = "imported"
MIN_OPSET = 7  # the oldest default-domain opset ONNX Runtime runs
PROBABILITY_TOLERANCE = 1e-3
# Operators that mark a graph as already quantized (QDQ or QOperator format).
_INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}


class ModelImportError(EdgeloopError):
    """The ONNX file cannot be imported as given; the message names the flag or the fix."""


@dataclass
class ImportSpec:
    """What the user says about the model (``edgeloop model import`` flags)."""

    name: str
    labels: list[str]
    size: int | None = None  # None: read from the graph's input (static height = width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input: str | None = None  # None: the graph's only input
    probabilities: str | None = None  # None: the only output, or one named "probabilities"
    embedding: str | None = None  # None: no embedding (monitoring runs without the embedding detectors)
    softmax: bool = False  # the probabilities output holds logits: append a Softmax

    def __post_init__(self) -> None:
        labels = [x.strip() for x in self.labels]
        if len(labels) < 2 or any(not x for x in labels) or len(set(labels)) != len(labels):
            raise ModelImportError(
                f"--labels needs at least two distinct, non-empty class names in output order; got {self.labels}"
            )
        self.labels = labels
        if not self.name.strip() or any(c in self.name for c in "/@ \\"):
            raise ModelImportError(f"--name {self.name!r}: use a registry name without '/', '@' or spaces")
        if any(s <= 0 for s in self.std):
            raise ModelImportError(f"--std {self.std}: every channel's std must be > 0")


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None]  # int: static; str: symbolic; None: unknown


@dataclass
class Validation:
    """What the importer found in the source graph and what it wrote (stored as evidence)."""

    source_file: str
    source_sha256: str
    producer: str
    opset: int
    ir_version: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    input: str
    probabilities: str
    embedding: str | None
    size: int
    classes: int
    embedding_dim: int | None
    softmax_added: bool
    batch_axis_made_dynamic: bool
    dropped_outputs: list[str]
    precision: str
    checks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(value_info: Any) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return out


def _tensor(value_info: Any) -> TensorInfo:
    import onnx

    elem = value_info.type.tensor_type.elem_type
    return TensorInfo(value_info.name, onnx.TensorProto.DataType.Name(elem).lower(), _dims(value_info))


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (node inputs/outputs, graph I/O, value_info)."""
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _pick_output(names: list[str], wanted: str | None, embedding: str | None) -> str:
    if wanted:
        if wanted not in names:
            raise ModelImportError(
                f"--probabilities {wanted!r}: the graph has no such output (outputs: {names})"
            )
        return wanted
    rest = [n for n in names if n != embedding]
    if len(rest) == 1:
        return rest[0]
    if PROBS_OUTPUT in rest:
        return PROBS_OUTPUT
    raise ModelImportError(
        f"the graph has {len(names)} outputs {names}: name the class probabilities with --probabilities NAME"
    )


def _check_spatial(shape: list[int | str | None], spec: ImportSpec, name: str) -> tuple[int, list[str]]:
    checks = []
    if len(shape) != 4:
        raise ModelImportError(
            f"input {name!r} has rank {len(shape)} {shape}; edgeloop feeds images as [N, 3, S, S] (NCHW): "
            "re-export the model with an NCHW image input"
        )
    channels, h, w = shape[1], shape[2], shape[3]
    if isinstance(channels, int) and channels != 3:
        raise ModelImportError(
            f"input {name!r} takes {channels} channels {shape}; edgeloop feeds RGB [N, 3, S, S] (NCHW). "
            "Channels-last models ([N, S, S, 3]) need a Transpose at the front: re-export as NCHW"
        )
    static = [d for d in (h, w) if isinstance(d, int)]
    if len(static) == 2 and static[0] != static[1]:
        raise ModelImportError(f"input {name!r} is {h}x{w}; edgeloop feeds square images (S x S)")
    if static and spec.size is not None and spec.size != static[0]:
        raise ModelImportError(f"--size {spec.size} but input {name!r} takes {static[0]}x{static[0]} pixels")
    size = spec.size if spec.size is not None else (static[0] if static else None)
    if size is None:
        raise ModelImportError(f"input {name!r} has a dynamic spatial size {shape}: say which with --size S")
    checks.append(f"input {name!r} {shape}: NCHW, 3 channels, {size}x{size}")
    return size, checks


def detect_precision(model: Any) -> Precision:
    """INT8 for a graph that is already quantized (QDQ or QOperator nodes), else FP32."""
    return Precision.INT8 if any(n.op_type in _INT8_OPS for n in model.graph.node) else Precision.FP32


def import_onnx(source: Path | str, out_dir: Path | str, spec: ImportSpec) -> tuple[ModelCard, Validation]:
    """Validate ``source`` (a raw ``.onnx`` file) and write ``out_dir/model.onnx`` with the standard
    interface and its card (``lineage.origin = imported``); see the module docstring."""
    import onnx
    from onnx import TensorProto, helper

    from edgeloop.core.model_card import sha256_file

    source = Path(source)
    if not source.is_file():
        raise ModelImportError(f"{source} is not a file; pass the path of an .onnx model")
    try:
        model = onnx.load(str(source))  # external weights next to the file are read in
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, ValidationError, missing external data
        raise ModelImportError(
            f"{source} is not a valid ONNX model: {type(e).__name__}: {str(e)[:300]}"
        ) from e
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelImportError(
            f"{source} uses opset {opset}; ONNX Runtime runs opset {MIN_OPSET} and newer: convert it with "
            "onnx.version_converter.convert_version(model, 17)"
        )
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor(i) for i in graph.input if i.name not in initializers]
    outputs = [_tensor(o) for o in graph.output]
    checks = [f"onnx.checker passed (opset {opset}, IR {model.ir_version})"]

    if spec.input:
        inp = next((i for i in inputs if i.name == spec.input), None)
        if inp is None:
            raise ModelImportError(
                f"--input {spec.input!r}: the graph has no such input (inputs: {[i.name for i in inputs]})"
            )
    elif len(inputs) == 1:
        inp = inputs[0]
    else:
        raise ModelImportError(
            f"the graph has {len(inputs)} inputs {[i.name for i in inputs]}: edgeloop feeds one image "
            "tensor; name it with --input NAME (other inputs need defaults baked into the graph)"
        )
    if len(inputs) > 1:
        raise ModelImportError(
            f"the graph has inputs {[i.name for i in inputs]}; edgeloop feeds only {inp.name!r}: "
            "fold the others into the graph as initializers"
        )
    if inp.dtype != "float":
        raise ModelImportError(
            f"input {inp.name!r} is {inp.dtype}; edgeloop feeds float32 normalised pixels "
            "((x / 255 - mean) / std, set with --mean/--std): re-export with a float input"
        )
    size, more = _check_spatial(inp.shape, spec, inp.name)
    checks += more

    out_names = [o.name for o in outputs]
    probs_name = _pick_output(out_names, spec.probabilities, spec.embedding)
    probs_info = next(o for o in outputs if o.name == probs_name)
    k = len(spec.labels)
    if len(probs_info.shape) != 2:
        raise ModelImportError(
            f"output {probs_name!r} has shape {probs_info.shape}; class scores must be [N, C]"
        )
    if isinstance(probs_info.shape[1], int) and probs_info.shape[1] != k:
        raise ModelImportError(
            f"output {probs_name!r} has {probs_info.shape[1]} classes but --labels names {k}: "
            f"{spec.labels}; give one label per class, in output order"
        )
    emb_name = spec.embedding
    if emb_name is not None:
        if emb_name not in out_names:
            raise ModelImportError(
                f"--embedding {emb_name!r}: the graph has no such output (outputs: {out_names})"
            )
        if emb_name == probs_name:
            raise ModelImportError("--embedding and --probabilities name the same output")
    dropped = [n for n in out_names if n not in (probs_name, emb_name)]

    # rewrite the interface: nothing inside the graph changes; a tensor already named like one of
    # the standard names moves aside first
    def tensors() -> set[str]:
        return {x for n in graph.node for x in (*n.input, *n.output)} | {i.name for i in graph.input}

    def move_aside(name: str) -> None:
        nonlocal probs_name, emb_name
        _rename(graph, name, f"{name}__source")
        probs_name = f"{name}__source" if probs_name == name else probs_name
        emb_name = f"{name}__source" if emb_name == name else emb_name

    if inp.name != INPUT_NAME:
        if INPUT_NAME in tensors():
            move_aside(INPUT_NAME)
        _rename(graph, inp.name, INPUT_NAME)
    for standard in (PROBS_OUTPUT, EMBEDDING_OUTPUT):
        if standard in tensors():
            move_aside(standard)
    batch_made_dynamic = False
    in_dims = next(i for i in graph.input if i.name == INPUT_NAME).type.tensor_type.shape.dim
    if in_dims[0].HasField("dim_value"):
        in_dims[0].Clear()
        in_dims[0].dim_param = "n"
        batch_made_dynamic = True
    for i, d in ((2, size), (3, size), (1, 3)):
        if not in_dims[i].HasField("dim_value"):
            in_dims[i].Clear()
            in_dims[i].dim_value = d
    del graph.output[:]
    graph.node.append(
        helper.make_node("Softmax", [probs_name], [PROBS_OUTPUT], axis=-1)
        if spec.softmax
        else helper.make_node("Identity", [probs_name], [PROBS_OUTPUT])
    )
    graph.output.append(helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["n", k]))
    if emb_name is not None:
        graph.node.append(helper.make_node("Flatten", [emb_name], [EMBEDDING_OUTPUT], axis=1))
        graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["n", None]))
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - a graph the rewrite broke must not be written
        raise ModelImportError(f"the rewritten graph does not check: {e}") from e

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(model.SerializeToString())
    preprocessing = PreprocessConfig(size=size, mean=spec.mean, std=spec.std)
    embedding_dim, more = _run_checks(out / MODEL_FILE, preprocessing, k, spec, probs_info.name, emb_name)
    checks += more
    precision = detect_precision(model)
    digest = sha256_file(source)
    lineage = {
        "origin": ORIGIN,
        "source_file": source.name,
        "source_sha256": digest,
        "source_producer": f"{model.producer_name} {model.producer_version}".strip() or "unknown",
        "source_opset": str(opset),
        "source_input": inp.name,
        "source_probabilities": probs_info.name,
        "source_embedding": spec.embedding or "",
    }
    card = ModelCard(
        name=spec.name,
        architecture=f"imported-onnx:{hashlib.sha256(digest.encode()).hexdigest()[:8]}",
        labels=list(spec.labels),
        preprocessing=preprocessing,
        outputs=[PROBS_OUTPUT] + ([EMBEDDING_OUTPUT] if emb_name else []),
        embedding_dim=embedding_dim,
        precision=precision,
        lineage={k2: v for k2, v in lineage.items() if v},
    ).with_digests(out)
    card.save(out)
    validation = Validation(
        source_file=str(source),
        source_sha256=digest,
        producer=lineage["source_producer"],
        opset=opset,
        ir_version=int(model.ir_version),
        inputs=inputs,
        outputs=outputs,
        input=inp.name,
        probabilities=probs_info.name,
        embedding=spec.embedding,
        size=size,
        classes=k,
        embedding_dim=embedding_dim,
        softmax_added=spec.softmax,
        batch_axis_made_dynamic=batch_made_dynamic,
        dropped_outputs=dropped,
        precision=precision.value,
        checks=checks,
    )
    return card, validation


def _run_checks(
    path: Path, preprocessing: PreprocessConfig, k: int, spec: ImportSpec, probs: str, emb: str | None
) -> tuple[int | None, list[str]]:
    """Run the rewritten model on a batch of 2 seeded images: shapes, finiteness, probabilities."""
    from edgeloop.core.errors import ModelSessionError
    from edgeloop.core.model_loader import OrtSettings, open_session
    from edgeloop.core.preprocessing import Preprocess

    try:
        session, _ = open_session(path.read_bytes(), OrtSettings(providers=["cpu"], intra_op_threads=1))
    except ModelSessionError as e:
        raise ModelImportError(f"ONNX Runtime cannot open the model: {e}") from e
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (preprocessing.size, preprocessing.size, 3), dtype=np.uint8) for _ in range(2)
    ]
    x = Preprocess(preprocessing).batch(images)
    names = [PROBS_OUTPUT] + ([EMBEDDING_OUTPUT] if emb else [])
    try:
        result = session.run(names, {INPUT_NAME: x})
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise ModelImportError(
            f"the model does not run on a batch of 2 images of {preprocessing.size}x{preprocessing.size} "
            f"({type(e).__name__}: {str(e)[:300]}); re-export it with a dynamic batch axis "
            "(e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'n'}}))"
        ) from e
    p = np.asarray(result[0], dtype=np.float64)
    if p.shape != (2, k):
        raise ModelImportError(
            f"output {probs!r} gives shape {list(p.shape)} for 2 images; expected [2, {k}] (one score per label)"
        )
    if not np.isfinite(p).all():
        raise ModelImportError(
            f"output {probs!r} is not finite on test images; check the model and --mean/--std"
        )
    sums = p.sum(axis=1)
    if (p < -PROBABILITY_TOLERANCE).any() or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE:
        raise ModelImportError(
            f"output {probs!r} is not probabilities (rows sum to {np.round(sums, 4).tolist()}): "
            "if it holds logits, pass --softmax"
        )
    checks = [f"output {probs!r} -> probabilities [N, {k}]: rows sum to 1 (batch of 2 ran)"]
    if not emb:
        checks.append(
            "no embedding output: monitoring runs without embedding MMD and the out-of-distribution flag"
        )
        return None, checks
    vectors = np.asarray(result[1])
    if vectors.ndim != 2 or vectors.shape[0] != 2 or vectors.shape[1] == 0:
        raise ModelImportError(
            f"output {emb!r} gives shape {list(vectors.shape)}; an embedding is one vector per image"
        )
    checks.append(f"output {emb!r} -> embedding [N, {vectors.shape[1]}]")
    return int(vectors.shape[1]), checks


# -- the whole path -------------------------------------------------------------------------------------------------
@dataclass
class ImportOutcome:
    card: ModelCard
    validation: Validation
    model_dir: Path  # the staged model (model.onnx, card, reference profile)
    staging: StagingResult | None = None
    registered: Registered | None = None

    def summary(self) -> str:
        v, c = self.validation, self.card
        lines = [
            f"imported {v.source_file} as {c.name}: {len(c.labels)} classes {c.labels}, "
            f"{c.preprocessing.size}x{c.preprocessing.size}, opset {v.opset}, producer {v.producer}",
            *(f"  check: {x}" for x in v.checks),
        ]
        if v.dropped_outputs:
            lines.append(f"  outputs not used: {v.dropped_outputs}")
        ev = c.precision_evidence
        for m in ev.get("measurements", []):
            lines.append(
                f"  {m['precision']}: batch-1 {m['latency_ms_b1']:.3f} ms (median of {m['latency_runs_b1']}), "
                f"batch-8 {m['latency_ms_b8']:.3f} ms, val accuracy {m['accuracy']:.3f} (n={m['images']})"
            )
        for name, err in (ev.get("errors") or {}).items():
            lines.append(f"  {name}: not measured ({err[:160]})")
        lines.append(f"  precision: {c.precision.value} on {c.execution_provider}")
        if self.staging is not None:
            lines.append(f"  gate: {self.staging.decision.summary()}")
        if self.registered is not None:
            r = self.registered
            lines.append(
                f"  registered {r.name} version {r.version} (lineage origin={ORIGIN}); "
                + (
                    f"approve with `edgeloop approve {r.name} {r.version}`"
                    if r.gate_passed
                    else "rejected by the gate"
                )
            )
        lines.append(f"  model directory: {self.model_dir}")
        return "\n".join(lines)


def import_model(
    settings: Settings | None,
    source: Path | str,
    spec: ImportSpec,
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    thresholds: GateThresholds | None = None,
    latency_requests: int = 200,
    register: bool = True,
    target: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> ImportOutcome:
    """Import ``source``, choose its precision on this machine, stage it (reference profile), evaluate it
    through the model server on ``dataset_dir``'s test split, and (with ``register``) register it as a
    candidate of the registered model ``spec.name`` with lineage ``origin=imported``."""
    from edgeloop.components.precision import choose_precision
    from edgeloop.pipelines.staging import run_staging_evaluation, stage_model

    say = progress or log.info
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if not (dataset_dir / "index.jsonl").is_file():
        raise ModelImportError(
            f"{dataset_dir} is not an edgeloop dataset (no index.jsonl): build one from your labels with "
            "`edgeloop labels import` then `edgeloop dataset build`"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "model_card.json").is_file():
        raise ModelImportError(
            f"{out_dir} exists and is not a model directory (it would be replaced): choose a new --out"
        )
    work = Path(tempfile.mkdtemp(prefix="edgeloop-import-"))
    try:
        say("validating the graph")
        card, validation = import_onnx(source, work / "fp32", spec)
        _check_dataset_labels(dataset_dir, card.labels)
        say("measuring precision and latency on this machine")
        if card.precision is Precision.FP32:
            chosen = choose_precision(work / "fp32", work / "chosen", dataset_dir=dataset_dir, target=target)
        else:  # already quantized by its authors: measured as it is
            chosen = _measure_as_is(work / "fp32", work / "chosen", dataset_dir, target)
        say(f"precision {chosen.precision.value}; building the monitoring reference profile")
        staged = stage_model(work / "chosen", out_dir, dataset_dir)
        outcome = ImportOutcome(ModelCard.load(staged), validation, staged)
        say("staging evaluation through the model server")
        outcome.staging = run_staging_evaluation(
            settings,
            dataset_dir,
            staged,
            reference_model_dir=work / "fp32",
            thresholds=thresholds,
            latency_requests=latency_requests,
            compare_with_champion=settings is not None,
        )
        if register:
            if settings is None:
                raise ModelImportError("registering needs settings (the MLflow registry)")
            say("registering the candidate")
            outcome.registered = register_imported(settings, staged, outcome, dataset_dir)
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_dataset_labels(dataset_dir: Path, labels: Sequence[str]) -> None:
    from edgeloop.components.dataset import load_rows

    found = {r.label for split in ("train", "val", "test") for r in load_rows(dataset_dir, split)}
    unknown = sorted(found - set(labels))
    if unknown:
        raise ModelImportError(
            f"the dataset in {dataset_dir} has labels the model does not know: {unknown} "
            f"(--labels {','.join(labels)}); import with the dataset's class names, in the model's output order"
        )


def _measure_as_is(model_dir: Path, out_dir: Path, dataset_dir: Path, target: str) -> ModelCard:
    """A model that arrives quantized: its latency and accuracy measured, no variant built."""
    from edgeloop.components.precision import chosen_metrics, provider_for_target, select_precision

    card = ModelCard.load(model_dir)
    provider = provider_for_target(target)
    decision = select_precision(
        model_dir / MODEL_FILE,
        dataset_dir,
        out_dir,
        labels=card.labels,
        size=card.preprocessing.size,
        provider=provider,
        candidates=(Precision.FP32,),  # the one variant there is, measured as the baseline
        preprocessing=card.preprocessing,
    )
    m = decision.measurements[0]
    evidence = {**decision.evidence(), "chosen": card.precision.value, "target": target, "as_imported": True}
    new = card.model_copy(
        update={
            "execution_provider": provider,
            "precision_evidence": evidence,
            "metrics": {**card.metrics, **chosen_metrics(m)},
        }
    ).with_digests(out_dir)
    new.save(out_dir)
    return new


def register_imported(
    settings: Settings, staged: Path, outcome: ImportOutcome, dataset_dir: Path
) -> Registered:
    """Register the staged import as a version of the registered model named like the card."""
    import json

    from edgeloop.pipelines import registry

    assert outcome.staging is not None
    named = settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"registered_model": outcome.card.name})}
    )
    info = dataset_dir / "dataset.json"
    dataset_version = json.loads(info.read_text()).get("version", "") if info.is_file() else ""
    lineage = {
        **{k: v for k, v in outcome.card.lineage.items() if k.startswith(("origin", "source_"))},
        "dataset_version": dataset_version,
        "champion_compared": outcome.staging.champion_version or "none",
    }
    with tempfile.TemporaryDirectory() as tmp:
        evidence = Path(tmp) / "import.json"
        evidence.write_text(json.dumps(outcome.validation.as_dict(), indent=2))
        extra = {"import.json": evidence} | ({"dataset.json": info} if info.is_file() else {})
        return registry.register_candidate(
            named,
            staged,
            outcome.staging.report,
            outcome.staging.decision,
            report_markdown=outcome.staging.markdown,
            champion_report=outcome.staging.champion_report,
            lineage=lineage,
            params={"origin": ORIGIN, "source_file": outcome.validation.source_file},
            extra_evidence=extra,
        )
