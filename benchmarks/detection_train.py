"""How well and how fast does a detector learn the seeded defects? COCO metrics on held-out images.

Generates a seeded detection sample (``edgeloop data generate --task detection``), builds its dataset
(split 0.5 / 0.1 / 0.4, so that at least 200 images are held out at the default 520), trains through
the DDP entry point (``torchrun -m edgeloop.components.train``, 2 processes) and records the COCO
metrics of the best epoch on val and test (mAP@0.5 with its bootstrap interval, mAP@0.5:0.95, AP per
class, recall at the operating threshold), every epoch's validation mAP, the wall time and the CPU.
No services: the images go from disk straight into the dataset build.

    .venv/bin/python -m benchmarks.detection_train [--images 520] [--size 192] [--epochs 15]
        [--detector fasterrcnn_tiny_fpn] [--lr 2e-3] [--batch-size 4]

Writes benchmarks/results/detection_train.json (one entry per configuration, appended) and
detection_train.png (validation mAP@0.5 per epoch of every recorded run).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


class _Files:
    """A blob store stand-in for the dataset build: the generated files, by the URI the manifest gives."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def download(self, uri: str) -> bytes:
        return self.files[uri]


def build(root: Path, images: int, size: int, seed: int) -> Path:
    from edgeloop.components.dataset import build_dataset
    from edgeloop.components.labels import ManifestRow, write_manifest
    from edgeloop.core.model_card import sha256_bytes
    from edgeloop.local.sample_data import generate_detection_dataset

    samples = generate_detection_dataset(root / "sample", images=images, seed=seed, size=size, progress=True)
    rows, files = [], {}
    for i, (meta, boxes) in enumerate(samples):
        data = (root / "sample" / meta.file).read_bytes()
        uri = f"az://images/bench/{sha256_bytes(data)}.png"
        files[uri] = data
        rows.append(
            ManifestRow(
                uri,
                sha256_bytes(data),
                "",
                "bench",
                "",
                i,
                i,
                1,
                1.0,
                boxes=[b.as_dict() for b in boxes],
                width=size,
                height=size,
            )
        )
    manifest = write_manifest(rows, root / "manifest.jsonl")
    kw: dict[str, Any] = {"upload": False, "log_mlflow": False, "store": _Files(files)}
    build_dataset(None, manifest, root / "dataset", fractions=(0.5, 0.1, 0.4), **kw)
    return root / "dataset"


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in runs:
        c = r["config"]
        ax.plot(
            [h["epoch"] for h in r["history"]],
            [h.get("val_map_50", 0.0) for h in r["history"]],
            marker="o",
            ms=3,
            label=f"{c['detector'].split('_')[0]} {c['size']} px, lr {c['lr']}, {r['wall_s']:.0f} s",
        )
    ax.axhline(0.8, ls=":", color="tab:red", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP@0.5")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("detector training on the seeded defects (2 CPU processes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from edgeloop.components.defaults import DETECTION, DETECTORS
    from edgeloop.components.train import machine_info
    from edgeloop.components.training import torchrun_prefix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=520)
    ap.add_argument("--size", type=int, default=DETECTION.size)
    ap.add_argument("--epochs", type=int, default=DETECTION.epochs)
    ap.add_argument("--detector", choices=DETECTORS, default=DETECTION.detector)
    ap.add_argument("--lr", type=float, default=DETECTION.lr)
    ap.add_argument("--batch-size", type=int, default=DETECTION.batch_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "detection_train.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeloop-det-bench-") as tmp:
        dataset = build(Path(tmp), args.images, args.size, args.seed)
        run = Path(tmp) / "run"
        cmd = [
            *torchrun_prefix(2),
            "--data",
            str(dataset),
            "--out",
            str(run),
            "--detector",
            args.detector,
            "--size",
            str(args.size),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--seed",
            str(args.seed),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        metrics = json.loads((run / "metrics.json").read_text())
    machine = machine_info()
    entry = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "wall_s": round(wall, 1),
        "history": metrics.pop("history"),
        "metrics": metrics,
        "machine": {"cpu": machine.get("cpu_model", platform.processor()), "isa": machine.get("cpu_isa", "")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    runs.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    m = entry["metrics"]
    print(
        f"{args.detector} {args.size} px, {args.epochs} epochs in {wall:.0f} s: test mAP@0.5 "
        f"{m.get('test_map_50', float('nan')):.3f} (95% CI {m.get('test_map_50.ci95_low')}-"
        f"{m.get('test_map_50.ci95_high')}, n={m.get('test_images')}), val {m.get('val_map_50', float('nan')):.3f}"
    )
    return entry


if __name__ == "__main__":
    main()
