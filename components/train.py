"""DDP training of a torchvision classifier on an edgeloop dataset directory.

Run under torchrun (one process per device; gloo on CPU, nccl on GPU)::

    torchrun --standalone --nproc-per-node 2 -m edgeloop.components.train --data DATASET_DIR --out OUT_DIR

or through :func:`edgeloop.components.training.run_training`, which launches exactly that.
Shaped like torchvision's references/classification/train.py: ``train_one_epoch``,
``evaluate``, ``main(args)``; one checkpoint dict (model, optimizer, lr_scheduler,
epoch, args, early-stopping state) written by rank 0 every epoch, resumable with
``--resume``. Writes ``model.pt`` (best epoch, BatchNorm recalibrated, eval mode)
and ``metrics.json`` into ``--out``.

Reproducible as far as torch allows: every random source is seeded from ``--seed`` (weights,
augmentations per rank, samplers, DataLoader workers, BatchNorm calibration order) and
deterministic algorithms are requested (:func:`make_deterministic`). What torch cannot pin is
the float rounding of the machine's kernels (AVX2 vs AVX-512 paths differ in the last bits and a
long run amplifies them), so the run records the seed and the CPU's model and flags
(:func:`edgeloop.components.tracking.cpu_info`) in MLflow, ``model.pt`` and ``metrics.json``.
Every accuracy is stored with its sample size and 95 % Wilson interval (``<name>.n``,
``<name>.ci95_low``, ``<name>.ci95_high``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from edgeloop.components.defaults import ARCHS, TRAINING
from edgeloop.components.modeling import (
    MODEL_FILE,
    build_model,
    load_initial_weights,
    load_split,
    save_model_file,
)
from edgeloop.components.stats import metric_fields, proportion_fields

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.json"


# -- distributed helpers ----------------------------------------------------------------------------


def init_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """(rank, world size, device); a plain single process when not launched by torchrun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and args.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return rank, world, torch.device(f"cuda:{local}" if use_cuda else "cpu")
    use_cuda = torch.cuda.is_available() and args.device != "cpu"
    return 0, 1, torch.device("cuda" if use_cuda else "cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_dist():
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if is_dist():
        dist.barrier()


class DistributedWeightedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, each rank taking its share of one shared draw."""

    def __init__(self, weights: list[float], num_replicas: int, rank: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=g)
        return iter(draw[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def sampling_weights(
    targets: list[int], sources: list[str], class_weight: torch.Tensor | None, relabel_share: float
) -> list[float] | None:
    """Per-image draw weights: class-balanced when ``class_weight`` is given, with the relabeled
    images (source ``relabel``) raised to ``relabel_share`` of the total when they are fewer.
    None when every image is equally likely (plain shuffling is then enough)."""
    w = [float(class_weight[t]) if class_weight is not None else 1.0 for t in targets]
    relabeled = [i for i, s in enumerate(sources) if s == "relabel"]
    rest = sum(w) - sum(w[i] for i in relabeled)
    if relabeled and rest > 0 and 0 < relabel_share < 1:
        current = sum(w[i] for i in relabeled)
        wanted = relabel_share / (1 - relabel_share) * rest
        if 0 < current < wanted:
            for i in relabeled:
                w[i] *= wanted / current
            return w
    return w if class_weight is not None else None


def class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get 0)."""
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes).double()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return (w / w[counts > 0].mean()).float()


# -- the three named steps ---------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
) -> dict[str, float]:
    model.train()
    loss_sum = correct = seen = 0.0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(targets)
        correct += float((logits.argmax(1) == targets).sum())
        seen += len(targets)
    loss_sum, correct, seen = all_sum([loss_sum, correct, seen], device)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, num_classes: int
) -> dict[str, Any]:
    """Eval-mode loss/accuracy over this rank's shard, summed over ranks (no padded duplicates)."""
    model.eval()
    loss_sum = 0.0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        pred = logits.argmax(1)
        for t, p in zip(targets.tolist(), pred.tolist(), strict=True):
            confusion[t, p] += 1
    summed = all_sum([loss_sum, *confusion.flatten().tolist()], device)
    loss_sum, confusion = summed[0], torch.tensor(summed[1:]).view(num_classes, num_classes)
    seen = float(confusion.sum())
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "loss": loss_sum / max(seen, 1),
        "accuracy": float(confusion.diag().sum()) / max(seen, 1),
        "per_class_recall": per_class,
        "images": int(seen),
        "confusion": confusion.int().tolist(),
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DataLoader, device: torch.device, passes: int = 2) -> int:
    """Recompute BatchNorm running statistics as exact averages over ``loader`` (train images, no
    augmentation). Returns how many BatchNorm layers were reset (0: nothing to do)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for _ in range(passes):
        for images, _targets in loader:
            model(images.to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()
    return len(bns)


# -- entry point -------------------------------------------------------------------------------------


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share in [0, 1): 0 turns oversampling off")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="edgeloop DDP image-classifier training (a detection dataset as --data trains a detector: "
        "--data DIR --help lists its flags)",
        add_help=add_help,
    )
    p.add_argument("--data", required=True, type=Path, help="dataset directory (edgeloop dataset build)")
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoints, model.pt)")
    d = TRAINING
    p.add_argument("--arch", default=d.arch, choices=ARCHS)
    p.add_argument("--weights", type=Path, default=None, help="local checkpoint to start from (no downloads)")
    p.add_argument("--size", type=int, default=d.size, help="model input size in pixels (square)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--balance",
        choices=("loss", "sampler", "none"),
        default=d.balance,
        help="class-imbalance handling: weighted loss, weighted sampler, or none",
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=d.bn_momentum,
        help="BatchNorm momentum override (mobilenet_v3 ships 0.01); <0 keeps the default",
    )
    p.add_argument(
        "--relabel-share",
        type=_share,
        default=d.relabel_share,
        help="oversample relabeled images (task source 'relabel') to this share of each epoch's draws "
        "while they are fewer; 0 turns it off",
    )
    p.add_argument("--no-bn-recalibrate", action="store_true", help="skip the final BatchNorm recalibration")
    p.add_argument(
        "--eval-bn",
        choices=("recalibrate", "running"),
        default=d.eval_bn,
        help="per-epoch validation with BatchNorm statistics recomputed on the train images "
        "(honest eval-mode accuracy for early stopping) or with the running statistics",
    )
    p.add_argument(
        "--patience", type=int, default=d.patience, help="early stopping: epochs without val improvement"
    )
    p.add_argument("--min-epochs", type=int, default=d.min_epochs, help="no early stop before this epoch")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint.pt to resume from")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many epochs in this invocation (to test resuming)",
    )
    p.add_argument("--mlflow-tracking-uri", default=None)
    p.add_argument("--mlflow-experiment", default="edgeloop")
    p.add_argument("--mlflow-run-id", default=None, help="resume this MLflow run (rank 0 logs to it)")
    p.add_argument("--dataset-version", default=None, help="recorded in MLflow and model.pt")
    p.add_argument("--git-commit", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """Ask torch for deterministic algorithms everywhere it has them (a warning, not an error,
    for an op that has none) and turn off cuDNN's autotuner, whose choice varies run to run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (CUDA >= 10.2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` in each worker follow torch's per-worker
    seed, which the loader derives from its seeded generator."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def machine_info() -> dict[str, str]:
    """Where the run's numbers come from: CPU model and flags, torch's kernel level, threads."""
    from edgeloop.components.tracking import cpu_info

    info = cpu_info()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return {
        **info,
        "torch_cpu_capability": capability,
        "torch_num_threads": str(torch.get_num_threads()),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only=True
    }


def _mlflow(args: argparse.Namespace, rank: int):
    if rank != 0 or not args.mlflow_tracking_uri:
        return None
    import mlflow

    from edgeloop.components.tracking import configure

    configure(args.mlflow_tracking_uri, args.mlflow_experiment)
    run = mlflow.start_run(run_id=args.mlflow_run_id) if args.mlflow_run_id else mlflow.start_run()
    return mlflow, run


def start_run(args: argparse.Namespace):
    """What every training run starts with: (start time, rank, world size, device, the dataset's info)."""
    from edgeloop.components.dataset import DatasetInfo

    t0 = time.perf_counter()
    make_deterministic()
    rank, world, device = init_distributed(args)
    args.out.mkdir(parents=True, exist_ok=True)
    return t0, rank, world, device, DatasetInfo.load(args.data)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    t0, rank, world, device, info = start_run(args)
    classes = info.classes
    preprocess_cfg = PreprocessConfig(size=args.size)
    preprocess = Preprocess(preprocess_cfg)

    seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(args.arch, len(classes), None if args.bn_momentum < 0 else args.bn_momentum)
    if args.weights:
        skipped = load_initial_weights(model, args.weights)
        if rank == 0 and skipped:
            print(
                f"initialised from {args.weights}; not loaded (shape/name differs): {skipped}",
                file=sys.stderr,
            )
    model.to(device)
    seed_everything(args.seed + 1000 * rank)  # different augmentations per rank

    train_ds = load_split(args.data, "train", classes, preprocess, augment=True)
    val_ds = load_split(args.data, "val", classes, preprocess)
    if len(train_ds) == 0:
        raise SystemExit(f"{args.data} has no training images")
    weights = class_weights(train_ds.targets, len(classes))
    draw = sampling_weights(
        train_ds.targets,
        [str(r.metadata.get("source", "")) for r in train_ds.rows],
        weights if args.balance == "sampler" else None,
        args.relabel_share,
    )
    if draw is not None:
        sampler: Sampler[int] = DistributedWeightedSampler(draw, world, rank, args.seed)
    else:
        sampler = torch.utils.data.DistributedSampler(
            train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=False
        )
    train_loader = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=len(train_ds) > args.batch_size * world * 2,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(args.seed + 1000 * rank),
    )
    # every rank recalibrates on the same (unaugmented) train images: identical statistics everywhere
    calib_loader = DataLoader(
        load_split(args.data, "train", classes, preprocess),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    val_shard = torch.utils.data.Subset(val_ds, list(range(rank, len(val_ds), world)))
    val_loader = DataLoader(val_shard, batch_size=64, num_workers=args.workers, worker_init_fn=seed_worker)

    criterion = nn.CrossEntropyLoss(
        weight=weights.to(device) if args.balance == "loss" else None, label_smoothing=args.label_smoothing
    )
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=1, pct_start=0.15
    )

    start_epoch, best, bad_epochs, history = 0, {"accuracy": -1.0, "loss": math.inf, "epoch": -1}, 0, []
    if args.resume:
        with torch.serialization.safe_globals([argparse.Namespace, type(Path())]):  # its args
            ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
        if ckpt["args"].arch != args.arch:
            raise SystemExit(f"--resume {args.resume} is a {ckpt['args'].arch} checkpoint, not {args.arch}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch = ckpt["epoch"] + 1
        best, bad_epochs, history = ckpt["best"], ckpt["bad_epochs"], ckpt["history"]
        if rank == 0:
            torch.set_rng_state(ckpt["rng"][0])
        else:
            seed_everything(args.seed + 1000 * rank + start_epoch)

    machine = machine_info()
    tracker = _mlflow(args, rank)
    if tracker and start_epoch == 0:
        mlflow = tracker[0]
        params = {
            k: (str(v) if v is not None else "")
            for k, v in vars(args).items()
            if k not in {"mlflow_tracking_uri", "mlflow_run_id", "resume", "stop_after", "no_progress"}
        }
        mlflow.log_params(
            {
                **params,
                "world_size": world,
                "device": device.type,
                "train_images": len(train_ds),
                "val_images": len(val_ds),
                "classes": ",".join(classes),
                "torch": torch.__version__,
                "deterministic": "true",
                "cpu_isa": machine["cpu_isa"],
                "torch_cpu_capability": machine["torch_cpu_capability"],
            }
        )
        mlflow.set_tags(
            {
                "dataset_version": args.dataset_version or info.version,
                "git_commit": args.git_commit or "unknown",
                "arch": args.arch,
                "seed": str(args.seed),
                **{f"host.{k}": v[:5000] for k, v in machine.items()},
            }
        )

    from tqdm import tqdm

    bar = tqdm(
        total=args.epochs,
        initial=start_epoch,
        desc=f"training {args.arch} x{world}",
        unit="epoch",
        disable=rank != 0 or args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    epochs_run = 0
    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(ddp_model, criterion, optimizer, train_loader, device)
        scheduler.step()
        if args.eval_bn == "recalibrate":
            recalibrate_bn(model, calib_loader, device, passes=1)
        ev = evaluate(model, criterion, val_loader, device, len(classes))
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": tr["loss"],
            "train_accuracy": tr["accuracy"],
            "val_loss": ev["loss"],
            "val_accuracy": ev["accuracy"],
        }
        history.append(row)
        improved = (ev["accuracy"], -ev["loss"]) > (best["accuracy"], -best["loss"])
        if improved:
            best, bad_epochs = {"accuracy": ev["accuracy"], "loss": ev["loss"], "epoch": epoch}, 0
        else:
            bad_epochs += 1
        if rank == 0:
            ckpt = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "args": args,
                "best": best,
                "bad_epochs": bad_epochs,
                "history": history,
                "classes": classes,
                "rng": [torch.get_rng_state()],
            }
            tmp = args.out / f".{CHECKPOINT_FILE}.tmp"
            torch.save(ckpt, tmp)
            tmp.replace(args.out / CHECKPOINT_FILE)
            if improved:
                torch.save({"model": model.state_dict(), "epoch": epoch, "val": ev}, args.out / BEST_FILE)
            if tracker:
                tracker[0].log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        bar.set_postfix(
            loss=f"{tr['loss']:.3f}", val_acc=f"{ev['accuracy']:.3f}", best=f"{best['accuracy']:.3f}"
        )
        bar.update(1)
        epochs_run += 1
        if epoch + 1 >= args.min_epochs and bad_epochs >= args.patience:
            stopped_early = True
            break
        if args.stop_after is not None and epochs_run >= args.stop_after:
            break
    bar.close()
    barrier()

    finished = stopped_early or (history and history[-1]["epoch"] == args.epochs - 1)
    result: dict[str, Any] = {
        "finished": bool(finished),
        "epochs_run": epochs_run,
        "history": history,
        "best_epoch": best["epoch"],
        "stopped_early": stopped_early,
        "seed": args.seed,
        "machine": machine,
    }
    if rank == 0 and finished:
        result.update(
            _finalize(
                args, model, criterion, classes, preprocess, preprocess_cfg, info, device, tracker, machine
            )
        )
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["world_size"] = world
        (args.out / METRICS_FILE).write_text(json.dumps(result, indent=2))
    if tracker:
        tracker[0].end_run()
    barrier()
    if is_dist():
        dist.destroy_process_group()
    return result


def _finalize(
    args, model, criterion, classes, preprocess, preprocess_cfg, info, device, tracker, machine
) -> dict[str, Any]:
    """Rank 0: best weights, BatchNorm recalibrated on the train images, eval on val and test, model.pt."""
    best = torch.load(args.out / BEST_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    val_ds = load_split(args.data, "val", classes, preprocess)
    before = (
        _evaluate_local(model, DataLoader(val_ds, batch_size=64), device, len(classes))
        if len(val_ds)
        else None
    )
    n_bn = 0
    if not args.no_bn_recalibrate:
        calib = DataLoader(
            load_split(args.data, "train", classes, preprocess),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        n_bn = recalibrate_bn(model, calib, device)
    model.eval()
    # rank 0 alone: evaluate full splits without the collective all-reduce
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        ds = load_split(args.data, split, classes, preprocess)
        if len(ds) == 0:
            continue
        ev = _evaluate_local(model, DataLoader(ds, batch_size=64), device, len(classes))
        hits = int(np.trace(np.asarray(ev["confusion"])))
        metrics |= proportion_fields(f"{split}_accuracy", hits, ev["images"])
        metrics |= metric_fields(f"{split}_loss", ev["loss"], ev["images"])
        metrics[f"{split}_images"] = ev["images"]
        if split == "val":
            metrics["val_per_class_recall"] = dict(zip(classes, ev["per_class_recall"], strict=True))
            metrics["val_confusion"] = ev["confusion"]
    if before is not None:
        hits = int(np.trace(np.asarray(before["confusion"])))
        metrics |= proportion_fields("val_accuracy_before_bn_recalibration", hits, before["images"])
    metrics["bn_layers_recalibrated"] = n_bn
    save_model_file(
        args.out / MODEL_FILE,
        model,
        args.arch,
        classes,
        preprocess_cfg,
        metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
        dataset_version=args.dataset_version or info.version,
        best_epoch=best["epoch"],
        args={k: str(v) for k, v in vars(args).items()},
        seed=args.seed,
        machine=machine,
    )
    if tracker:
        tracker[0].log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        tracker[0].log_metric("best_epoch", best["epoch"])
    return metrics


@torch.no_grad()
def _evaluate_local(model, loader, device, num_classes):
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    loss_sum = 0.0
    for images, targets in loader:
        logits = model(images.to(device))
        loss_sum += float(nn.functional.cross_entropy(logits, targets.to(device), reduction="sum"))
        for t, p in zip(targets.tolist(), logits.argmax(1).tolist(), strict=True):
            confusion[t, p] += 1
    seen = float(confusion.sum())
    return {
        "loss": loss_sum / max(seen, 1),
        "accuracy": float(confusion.diag().sum()) / max(seen, 1),
        "per_class_recall": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist(),
        "images": int(seen),
        "confusion": confusion.int().tolist(),
    }


def dataset_task(directory: Path) -> str:
    """``classification`` or ``detection``: what the dataset in ``directory`` holds (its dataset.json)."""
    from edgeloop.components.dataset import INFO_FILE

    try:
        return str(json.loads((Path(directory) / INFO_FILE).read_text()).get("task", "classification"))
    except (OSError, ValueError):
        return "classification"  # main() names what is wrong with the directory


def entry(argv: list[str] | None = None) -> dict[str, Any]:
    """The torchrun entry point: a detection dataset (``--data``) trains a detector
    (:mod:`edgeloop.components.train_detection`, its own flags), any other a classifier."""
    argv = sys.argv[1:] if argv is None else argv
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--data", type=Path)
    known, _ = peek.parse_known_args(argv)
    if known.data is not None and dataset_task(known.data) == "detection":
        from edgeloop.components import train_detection

        return train_detection.main(train_detection.get_args_parser().parse_args(argv))
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    entry()
