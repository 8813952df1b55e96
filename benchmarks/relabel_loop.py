"""Does the relabel loop recover? Shifted-site and in-distribution accuracy, round by round.

Round 0 trains the champion on the demo's seeded sample (1,000 images, the demo's parameters). Each
round then serves the champion to 200 fresh images of a shifted site (darker, colour cast, blur; the
generator's seed 777 + round - 1), scans the window with the default budget (20), answers every
queued relabel task through Label Studio's API with the generator's ground truth, and runs the
training pipeline (kfp.local; the gate decides, then auto-approval). After each round the champion
is measured on 200 held-out shifted and 200 held-out in-distribution images (Wilson 95 % intervals).

    .venv/bin/python -m benchmarks.relabel_loop [--rounds 3] [--state-dir DIR]

Without --state-dir it starts its own stack in a temporary state dir and stops it at the end.
Writes benchmarks/results/relabel_loop.json (after every round) and relabel_loop.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def plot(results: list[Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rounds = [r.round for r in results]
    for attr, name, colour in (
        ("shifted", "shifted site", "tab:red"),
        ("in_distribution", "in-distribution", "tab:blue"),
    ):
        acc = [getattr(r, attr) for r in results]
        ax.errorbar(
            rounds,
            [a.value for a in acc],
            yerr=[[a.value - a.low for a in acc], [a.high - a.value for a in acc]],
            marker="o",
            capsize=4,
            color=colour,
            label=f"{name} (n={acc[0].n})",
        )
    ax.axhline(0.8, ls=":", color="tab:red", lw=1)
    ax.axhline(0.95, ls=":", color="tab:blue", lw=1)
    ax.set_xticks(rounds)
    ax.set_xlabel("relabel round (0: trained on the seeded sample only)")
    ax.set_ylabel("champion accuracy (95% Wilson CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title("relabel loop: 20 labeled images of the shifted site per round")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def table(results: list[Any]) -> str:
    lines = [
        "| round | labeled (site) | gate | shifted-site accuracy (95% CI) | in-distribution accuracy (95% CI) |",
        "|---|---|---|---|---|",
    ]
    labeled = 0
    for r in results:
        labeled += r.answered
        gate = "-" if r.round == 0 else f"{'pass' if r.gate_passed else 'FAIL'}, {r.decision}"
        lines.append(f"| {r.round} | {labeled} | {gate} | {r.shifted.text()} | {r.in_distribution.text()} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from edgeloop.components.defaults import TRAINING
    from edgeloop.core.config import load_settings
    from edgeloop.local.stack import Stack
    from edgeloop.testing.loop import LoopConfig, RelabelLoop, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--state-dir", type=Path, default=None, help="use (and leave running) this stack")
    ap.add_argument("--per-class", type=int, default=LoopConfig.per_class)
    ap.add_argument("--out", type=Path, default=RESULTS / "relabel_loop.json")
    args = ap.parse_args(argv)

    own = args.state_dir is None
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="edgeloop-loop-bench-"))
    settings = load_settings(state_dir=state)
    stack = Stack(settings)
    t0 = time.perf_counter()
    stack.up(progress=lambda m: print(f"[stack] {m}", flush=True))
    loop = RelabelLoop(settings, state / "loop", LoopConfig(per_class=args.per_class))
    meta: dict[str, Any] = {
        "benchmark": "relabel_loop",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "config": {
            "seeded_images": 4 * args.per_class,
            "site_images_per_round": 4 * loop.config.traffic_per_class,
            "budget": loop.config.budget,
            "relabel_share": TRAINING.relabel_share,
            "eval_images_per_variant": 4 * loop.config.eval_per_class,
            "pipeline_params": loop.config.pipeline_params(),
        },
    }
    results = []
    try:
        for number in range(args.rounds + 1):
            load = os.getloadavg()
            r = loop.bootstrap() if number == 0 else loop.round(number)
            results.append(r)
            meta["load_avg_at_round_start"] = meta.get("load_avg_at_round_start", []) + [round(load[0], 2)]
            print(
                f"\nround {number}: shifted {r.shifted.text()}, in-distribution {r.in_distribution.text()}\n",
                flush=True,
            )
            meta["wall_s"] = round(time.perf_counter() - t0, 1)
            write_results(args.out, results, meta)  # after every round: a stopped run keeps what it measured
            plot(results, args.out.with_suffix(".png"))
    finally:
        if own:
            stack.down(progress=lambda m: print(f"[stack] {m}", flush=True))
    print(table(results))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return json.loads(args.out.read_text())


if __name__ == "__main__":
    main()
