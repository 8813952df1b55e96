"""DDP training of a torchvision detector on an edgeloop detection dataset.

The same entry point as classification: ``torchrun -m edgeloop.components.train --data DATASET_DIR
--out OUT_DIR`` runs this when the dataset holds boxes (:func:`edgeloop.components.train.entry`).
One process per device (gloo on CPU, nccl on GPU); each rank trains on its share of the training
images, rank 0 evaluates the validation split every epoch with the COCO metrics
(:mod:`edgeloop.components.coco_eval`), keeps the epoch with the best mAP@0.5, recalibrates the
BatchNorm statistics on the training images and writes ``model.pt`` and ``metrics.json``.
Every random source is seeded from ``--seed``; the machine's model and flags are recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgeloop.components.defaults import DETECTION, DETECTORS
from edgeloop.components.detection import BoxDataset, build_detector, collate, predict, train_one_epoch
from edgeloop.components.modeling import MODEL_FILE, save_model_file
from edgeloop.components.train import (
    METRICS_FILE,
    _mlflow,
    all_sum,
    barrier,
    machine_info,
    seed_everything,
    start_run,
)

TASK = "detection"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="edgeloop DDP defect-detector training", add_help=add_help)
    p.add_argument(
        "--data", required=True, type=Path, help="detection dataset directory (edgeloop dataset build)"
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (model.pt, metrics.json)")
    d = DETECTION
    p.add_argument("--detector", default=d.detector, choices=DETECTORS)
    p.add_argument("--size", type=int, default=d.size, help="model input size in pixels (square)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--bn-momentum", type=float, default=0.1, help="BatchNorm momentum (<0: the model's own)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="the operating threshold for recall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu"), default="auto")
    p.add_argument("--mlflow-tracking-uri", default=None)
    p.add_argument("--mlflow-experiment", default="edgeloop")
    p.add_argument("--mlflow-run-id", default=None, help="resume this MLflow run (rank 0 logs to it)")
    p.add_argument("--dataset-version", default=None, help="recorded in MLflow and model.pt")
    p.add_argument("--git-commit", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


@torch.no_grad()
def recalibrate_bn(model: nn.Module, dataset: BoxDataset, device: torch.device, batch_size: int = 16) -> int:
    """BatchNorm running statistics as exact averages over ``dataset`` (unaugmented), fed through the
    model's own transform to its backbone, as at inference."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for start in range(0, len(dataset), batch_size):
        xs = [dataset[i][0].to(device) for i in range(start, min(len(dataset), start + batch_size))]
        model.backbone(model.transform(xs)[0].tensors)  # type: ignore[operator]
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()
    return len(bns)


def evaluate(
    model: nn.Module, dataset: BoxDataset, device: torch.device, args: argparse.Namespace, bootstrap: int = 0
):
    from edgeloop.components.coco_eval import evaluate_detections

    preds = predict(model, dataset, device)
    return evaluate_detections(
        dataset.truth(),
        preds,
        dataset.classes,
        score_threshold=args.score_threshold,
        bootstrap=bootstrap,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    from edgeloop.components.dataset import load_rows
    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    t0, rank, world, device, info = start_run(args)
    if info.task != TASK:
        raise SystemExit(f"{args.data} is a {info.task} dataset, not a detection one")
    classes, preprocess_cfg = info.classes, PreprocessConfig(size=args.size)
    preprocess = Preprocess(preprocess_cfg)
    seed_everything(args.seed)  # the same initial weights on every rank
    model = build_detector(
        args.detector, len(classes), args.size, None if args.bn_momentum < 0 else args.bn_momentum
    )
    model.to(device)
    train_rows = load_rows(args.data, "train")
    if not train_rows:
        raise SystemExit(f"{args.data} has no training images")
    train_ds = BoxDataset(
        train_rows, args.data, classes, preprocess, augment=True, seed=args.seed + 1000 * rank
    )
    sampler: torch.utils.data.DistributedSampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed
    )
    # a last batch of one image breaks BatchNorm on 1x1 feature maps (SSDlite's extra layers)
    drop_last = len(train_ds) > args.batch_size * world * 2
    loader = DataLoader(
        train_ds, batch_size=args.batch_size, sampler=sampler, collate_fn=collate, drop_last=drop_last
    )
    val_ds = BoxDataset(load_rows(args.data, "val"), args.data, classes, preprocess) if rank == 0 else None
    ddp: nn.Module = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * max(1, len(loader))
    # the warm-up needs two steps at least: OneCycleLR divides by its length (short runs, few images)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps, pct_start=min(0.5, max(0.1, 2.5 / steps))
    )
    machine = machine_info()
    tracker = _mlflow(args, rank)
    if tracker:
        tracker[0].log_params(
            {
                "task": TASK,
                "detector": args.detector,
                "size": args.size,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "world_size": world,
                "train_images": len(train_ds),
                "classes": ",".join(classes),
                "cpu_isa": machine["cpu_isa"],
            }
        )
        tracker[0].set_tags({"dataset_version": args.dataset_version or info.version, "arch": args.detector})

    from tqdm import tqdm

    bar = tqdm(
        total=args.epochs,
        desc=f"training {args.detector} x{world}",
        unit="epoch",
        disable=rank != 0 or args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    history: list[dict[str, float]] = []
    best = {"map_50": -1.0, "epoch": -1}
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        loss = train_one_epoch(ddp, loader, optimizer, device, scheduler)
        loss = all_sum([loss], device)[0] / world
        row = {"epoch": epoch, "train_loss": round(loss, 5)}
        if rank == 0 and val_ds is not None and len(val_ds):
            m = evaluate(model, val_ds, device, args)
            row |= {"val_map_50": round(m.map_50, 5), "val_map_50_95": round(m.map_50_95, 5)}
            if m.map_50 > best["map_50"]:
                best = {"map_50": m.map_50, "epoch": epoch}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if tracker:
                tracker[0].log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
        history.append(row)
        bar.update(1)
        bar.set_postfix({k: v for k, v in row.items() if k != "epoch"})
        barrier()
    bar.close()
    metrics: dict[str, Any] = {}
    if rank == 0:
        if best_state is not None:
            model.load_state_dict(best_state)
        metrics = _finalize(
            args, model, train_rows, classes, preprocess, preprocess_cfg, info, device, machine
        )
        metrics |= {
            "best_epoch": best["epoch"],
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (args.out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if tracker:
            tracker[0].log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            tracker[0].end_run()
    barrier()
    return metrics


def _finalize(
    args, model, train_rows, classes, preprocess, preprocess_cfg, info, device, machine
) -> dict[str, Any]:
    """Rank 0: BatchNorm recalibrated on the train images, COCO metrics on val and test, model.pt."""
    from edgeloop.components.dataset import load_rows

    n_bn = recalibrate_bn(model, BoxDataset(train_rows, args.data, classes, preprocess), device)
    metrics: dict[str, Any] = {"bn_layers_recalibrated": n_bn}
    for split in ("val", "test"):
        ds = BoxDataset(load_rows(args.data, split), args.data, classes, preprocess)
        if not len(ds):
            continue
        m = evaluate(model, ds, device, args, bootstrap=200)
        metrics |= {
            f"{split}_map_50": m.map_50,
            f"{split}_map_50_95": m.map_50_95,
            f"{split}_map_50.ci95_low": m.map_50_ci95[0],
            f"{split}_map_50.ci95_high": m.map_50_ci95[1],
            f"{split}_recall_at_threshold": m.recall_at_threshold,
            f"{split}_images": m.images,
            f"{split}_boxes": m.boxes,
            f"{split}_ap_50": m.ap_50,
        }
    save_model_file(
        args.out / MODEL_FILE,
        model,
        args.detector,
        classes,
        preprocess_cfg,
        task=TASK,
        metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
        dataset_version=args.dataset_version or info.version,
        args={k: str(v) for k, v in vars(args).items()},
        seed=args.seed,
        machine=machine,
    )
    return metrics
