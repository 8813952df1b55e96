"""The relabel loop driven the way a site and its labelers drive it: the loop benchmark and its slow test.

One round: serve the champion (real model server, payload log on) -> send fresh images of a shifted
site (darker, colour cast, blur: :func:`edgeloop.local.sample_data.render_tag`) -> scan the window
(drift, flags, relabel tasks delivered to Label Studio) -> a labeler answers every queued task through
Label Studio's API with the generator's ground truth -> the training pipeline (``kfp.local``, the
gate decides, auto-approved after it) -> the champion's accuracy on held-out shifted and
in-distribution images (n and Wilson 95 % intervals).

Ground truth reaches the labeler by content: the server logs the image it ran (decoded and
resized with the model card's preprocessing, PNG-encoded), so the same three shared functions
give each sent image's sha256 here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.stats import Interval, proportion
from edgeloop.core import labelstudio as lsx

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.pipelines.runner import LocalOutcome

SHIFTED_SEED = 777  # the shifted site; round r draws seed 777 + r - 1
EVAL_SEED = 4242  # held-out images (both variants) the champion is measured on


@dataclass
class LoopConfig:
    per_class: int = 250  # seeded in-distribution images per class (the demo's sample)
    sample_seed: int = 0
    traffic_per_class: int = 50  # shifted images sent per round (200: the window)
    eval_per_class: int = 50  # held-out images per class and variant
    budget: int = 20  # the scan's default budget (ScanOptions.budget)
    params: dict[str, Any] = field(default_factory=dict)  # pipeline parameters; default: the demo's
    size: int = 128  # generated image size

    def pipeline_params(self) -> dict[str, Any]:
        from edgeloop.local.demo import DEMO_PARAMS

        return {**DEMO_PARAMS, **self.params, "auto_approve": True}


@dataclass
class Accuracy:
    value: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, i: Interval) -> Accuracy:
        return cls(round(i.value, 4), i.n, round(i.low, 4), round(i.high, 4))

    def text(self) -> str:
        return f"{self.value:.3f} (n={self.n}, 95% CI {self.low:.3f}-{self.high:.3f})"


@dataclass
class RoundResult:
    round: int  # 0: the champion trained on the seeded sample only
    champion: str | None  # registry version serving after the round
    candidate: str | None = None  # version the round's pipeline registered
    gate_passed: bool | None = None
    decision: str | None = None
    sent: int = 0  # shifted images served this round
    drift: bool | None = None
    flagged: int = 0
    queued: int = 0  # relabel tasks delivered to Label Studio
    answered: int = 0  # of them answered by the labeler
    dataset_images: int = 0  # images in the round's dataset (all splits)
    dataset_unique: int = 0  # distinct sha256 among them
    candidate_relabel_slice: Accuracy | None = None  # the candidate's accuracy on relabeled test images
    shifted: Accuracy | None = None  # the champion on held-out shifted images
    in_distribution: Accuracy | None = None  # the champion on held-out in-distribution images
    pipeline_s: float = 0.0
    round_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RelabelLoop:
    """The loop over one Label Studio project and registered model (``settings``)."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        config: LoopConfig | None = None,
        echo: Callable[[str], None] = print,
        pipeline_log: Path | None = None,
    ):
        self.settings = settings
        self.workdir = Path(workdir)
        self.config = config or LoopConfig()
        self.echo = echo
        self.pipeline_log = pipeline_log or self.workdir / "pipeline.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._eval: dict[str, tuple[list[Path], list[str]]] = {}

    # -- data ----------------------------------------------------------------------------------------
    def _generated(self, name: str, per_class: int, seed: int, shifted: bool) -> tuple[list[Path], list[str]]:
        from edgeloop.local.sample_data import generate_dataset
        from edgeloop.testing.monitoring import labeled_images

        out = self.workdir / name
        if not (out / "metadata.jsonl").exists():
            generate_dataset(out, per_class=per_class, seed=seed, size=self.config.size, shifted=shifted)
        return labeled_images(out)

    def eval_set(self, shifted: bool) -> tuple[list[Path], list[str]]:
        key = "eval-shifted" if shifted else "eval-base"
        if key not in self._eval:
            self._eval[key] = self._generated(key, self.config.eval_per_class, EVAL_SEED, shifted)
        return self._eval[key]

    # -- steps ---------------------------------------------------------------------------------------
    def bootstrap(self) -> RoundResult:
        """Seed the in-distribution sample (labeled) and train the first champion."""
        from edgeloop.local.seed import seed_directory

        t0 = time.perf_counter()
        c = self.config
        self._generated("sample", c.per_class, c.sample_seed, False)
        seed_directory(self.settings, self.workdir / "sample", source="sample", progress=False)
        outcome = self.run_pipeline()
        result = self._finish(RoundResult(round=0, champion=None), outcome)
        result.round_s = round(time.perf_counter() - t0, 1)
        return result

    def round(self, number: int) -> RoundResult:
        """Serve the champion to the shifted site, scan, answer the queued tasks, retrain."""
        t0 = time.perf_counter()
        result = RoundResult(round=number, champion=None)
        paths, labels = self._generated(
            f"site-round-{number}", self.config.traffic_per_class, SHIFTED_SEED + number - 1, True
        )
        model_dir = self.champion_dir()
        truth = self.serve_traffic(model_dir, paths, labels, result)
        self.scan_and_answer(model_dir, truth, result)
        result = self._finish(result, self.run_pipeline())
        result.round_s = round(time.perf_counter() - t0, 1)
        return result

    @property
    def served_name(self) -> str:
        """The model's name on the server and in the payload log: the registered model's, so that a
        scan reads this loop's traffic only."""
        return self.settings.mlflow.registered_model

    def champion_dir(self) -> Path:
        from edgeloop.core.model_loader import fetch_verified

        uri = f"models:/{self.settings.mlflow.registered_model}@champion"
        return fetch_verified(uri, self.settings, self.workdir / "models").directory

    def serve_traffic(
        self, model_dir: Path, paths: list[Path], labels: list[str], result: RoundResult
    ) -> dict[str, str]:
        """Send the images through the model server with the payload log on; returns sha256 -> label
        of what the server logs for each image."""
        from edgeloop.core.model_card import ModelCard, sha256_bytes
        from edgeloop.core.payload_log import encode_png
        from edgeloop.core.preprocessing import Preprocess, decode_image
        from edgeloop.serving.launcher import running_server

        card = ModelCard.load(model_dir)
        pre = Preprocess(card.preprocessing)
        pngs = [p.read_bytes() for p in paths]
        truth = {
            sha256_bytes(encode_png(pre.resize(decode_image(png, ("JPEG", "PNG"))))): label
            for png, label in zip(pngs, labels, strict=True)
        }
        self._window_start = datetime.now(UTC) - timedelta(seconds=2)
        extra = ["--payload_log_rate", "1", "--model_name", self.served_name]
        with (
            running_server([model_dir], self.settings, extra_args=extra) as srv,
            srv.rest_client(self.served_name) as client,
        ):
            for i in range(0, len(pngs), 16):
                client.infer_images(pngs[i : i + 16])
        self._window_end = datetime.now(UTC) + timedelta(seconds=2)  # the server flushed its log on exit
        result.sent = len(pngs)
        return truth

    def scan_and_answer(self, model_dir: Path, truth: dict[str, str], result: RoundResult) -> list[int]:
        """Scan the round's window with the default budget, then answer every task it delivered."""
        from edgeloop.monitoring.scan import ScanOptions, scan_window

        report = scan_window(
            self.settings,
            model_dir,
            self._window_start,
            self._window_end,
            ScanOptions(budget=self.config.budget, payload_model=self.served_name, any_version=True),
        )
        self.echo(report.summary())
        result.drift, result.flagged = report.drift, report.flagged
        task_ids = list((report.delivery or {}).get("task_ids") or [])
        result.queued = len(task_ids)
        ls = lsx.client(self.settings)
        project: Any = lsx.find_project(ls, self.settings.labelstudio.project_title)
        if task_ids and project is None:
            raise AssertionError(
                f"tasks were delivered, yet {self.settings.labelstudio.project_title!r} is missing"
            )
        unknown = []
        for task_id in task_ids:
            task = ls.tasks.get(str(task_id))
            sha = (task.data or {}).get("sha256")
            if sha not in truth:
                unknown.append(sha)
                continue
            lsx.annotate(ls, task_id, truth[sha], project.id)
            result.answered += 1
        if unknown:
            raise AssertionError(
                f"{len(unknown)} relabel tasks show images this round never sent: {unknown[:3]}"
            )
        return task_ids

    def run_pipeline(self) -> LocalOutcome:
        from edgeloop.pipelines.runner import run_local

        with open(self.pipeline_log, "a") as log:
            outcome = run_local(self.settings, self.config.pipeline_params(), log_stream=log)
        self.echo(outcome.summary())
        if not outcome.succeeded:
            raise AssertionError(f"the pipeline run failed: {outcome.failed_step}: {outcome.cause}")
        return outcome

    def _finish(self, result: RoundResult, outcome: LocalOutcome) -> RoundResult:
        from edgeloop.components.dataset import load_rows
        from edgeloop.pipelines import registry

        result.candidate, result.gate_passed, result.decision = (
            outcome.version,
            outcome.gate_passed,
            outcome.decision,
        )
        result.pipeline_s = outcome.seconds
        ds = outcome.tasks.get("build-dataset")
        uri = (ds.outputs.get("dataset") or {}).get("uri") if ds else None
        if uri:
            rows = load_rows(Path(uri.removeprefix("file://")))
            result.dataset_images = len(rows)
            result.dataset_unique = len({r.sha256 for r in rows})
        if outcome.version:
            ev = registry.download_evaluation(self.settings, outcome.version)
            est = ev.estimate("slice.source.relabel.accuracy") if ev is not None else None
            if est is not None:
                result.candidate_relabel_slice = Accuracy(round(est.value, 4), est.n, est.low, est.high)
        result.champion = registry.champion_version(self.settings)
        result.shifted, result.in_distribution = self.measure()
        return result

    def measure(self) -> tuple[Accuracy, Accuracy]:
        """The champion's accuracy on the held-out shifted and in-distribution images (ONNX Runtime)."""
        from edgeloop.monitoring.model import ModelRunner

        runner = ModelRunner(self.champion_dir(), threads=0)
        out = []
        for shifted in (True, False):
            paths, labels = self.eval_set(shifted)
            probs = runner.run(paths).probabilities
            hits = sum(runner.card.labels[int(p.argmax())] == y for p, y in zip(probs, labels, strict=True))
            out.append(Accuracy.of(proportion(int(hits), len(labels))))
        return out[0], out[1]


def write_results(path: Path, results: list[RoundResult], meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "rounds": [r.as_dict() for r in results]}, indent=2) + "\n")
    return path
