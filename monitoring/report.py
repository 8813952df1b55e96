"""A self-contained HTML drift report: detector table, plots and the images picked for labeling.

Plots (matplotlib, inline PNG): a 2-D PCA projection of reference vs window embeddings
(selected images marked), confidence histograms, image-statistic histograms. Flagged
images appear as base64 thumbnails with their reason and the model's prediction.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.monitoring.profile import IMAGE_STAT_NAMES, NO_EMBEDDING

if TYPE_CHECKING:
    from edgeloop.monitoring.flags import Flag
    from edgeloop.monitoring.profile import ReferenceProfile
    from edgeloop.monitoring.scan import ScanReport, Window


def pca_2d(reference: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project both sets on the first two principal axes of the reference."""
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(reference.shape[1])[:, :2]
    return (reference - mean) @ axes, (window - mean) @ axes if len(window) else np.zeros((0, 2))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _thumb(img: np.ndarray, size: int = 112) -> str:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _figures(profile: ReferenceProfile, window: Window, selected: list[Flag]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    if profile.has_embeddings:  # none for a model without an embedding output
        ref2, win2 = pca_2d(profile.embeddings, window.embeddings)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.scatter(ref2[:, 0], ref2[:, 1], s=10, alpha=0.5, label=f"reference ({len(ref2)})")
        if len(win2):
            ax.scatter(win2[:, 0], win2[:, 1], s=10, alpha=0.5, label=f"window ({len(win2)})")
            idx = [f.index for f in selected]
            if idx:
                ax.scatter(
                    win2[idx, 0],
                    win2[idx, 1],
                    s=60,
                    facecolors="none",
                    edgecolors="red",
                    label=f"selected ({len(idx)})",
                )
        ax.set_title("Embeddings, PCA of the reference")
        ax.legend(fontsize=8)
        figs["pca"] = _png(fig)

    conf, _ = window.confidence_margin()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bins = np.linspace(0, 1, 26).tolist()
    ax.hist(profile.confidence, bins=bins, alpha=0.6, density=True, label="reference")
    if len(conf):
        ax.hist(conf, bins=bins, alpha=0.6, density=True, label="window")
    ax.axvline(profile.low_confidence_threshold, color="red", ls="--", lw=1, label="low-confidence flag")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.legend(fontsize=8)
    figs["confidence"] = _png(fig)

    fig, axes = plt.subplots(2, 3, figsize=(9, 5))
    for j, (ax, name) in enumerate(zip(axes.ravel(), IMAGE_STAT_NAMES, strict=True)):
        ax.hist(profile.image_stats[:, j], bins=20, alpha=0.6, density=True, label="reference")
        if len(window.stats):
            ax.hist(window.stats[:, j], bins=20, alpha=0.6, density=True, label="window")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    figs["image_stats"] = _png(fig)
    return figs


def render_html(
    report: ScanReport,
    profile: ReferenceProfile,
    window: Window,
    selected: list[Flag],
    thumbnails: dict[str, np.ndarray],
) -> str:
    e = html.escape
    figs = _figures(profile, window, selected)
    rows = []
    for r in report.results:
        status = "skipped" if "skipped" in r.extra else ("DRIFT" if r.is_drift else "ok")
        cls = "drift" if r.is_drift else ""
        detail = e(r.extra.get("skipped", ", ".join(r.extra.get("drifted_features", []))))
        rows.append(
            f"<tr class='{cls}'><td>{e(r.name)}</td><td>{status}</td><td>{r.p_val:.4g}</td>"
            f"<td>{r.threshold:.4g}</td><td>{r.distance:.4g}</td><td>{r.n_ref}</td><td>{r.n}</td>"
            f"<td>{detail}</td></tr>"
        )
    cards = []
    for row in report.selected:
        img = thumbnails.get(row["sha256"])
        src = (
            f"<img src='data:image/png;base64,{_thumb(img)}'/>"
            if img is not None
            else "<div>(no image)</div>"
        )
        cards.append(
            f"<figure>{src}<figcaption>{e(row['label'])} {row['score']:.2f}<br/>"
            f"<small>{e(row['reason'])}<br/>value {row['value']:.2f} &middot; {e(row['sha256'][:10])}"
            f"</small></figcaption></figure>"
        )
    verdict = "DRIFT" if report.drift else "no drift"
    pca = (
        f"<img alt='embedding PCA' src='data:image/png;base64,{figs['pca']}'/>"
        if "pca" in figs
        else f"<p>No embedding plot: {e(NO_EMBEDDING)}.</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeloop drift report: {e(report.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; }}
tr.drift td {{ background: #fde2e2; }} .verdict {{ font-size: 1.4em; font-weight: bold; }}
figure {{ display: inline-block; margin: 6px; text-align: center; font-size: 12px; width: 130px; }}
img {{ max-width: 100%; }} .plots img {{ max-width: 48%; vertical-align: top; }}
</style></head><body>
<h1>Drift report: {e(report.model)} v{e(str(report.version))}</h1>
<p>Window {e(report.start)} .. {e(report.end)}: {report.records} records, {report.images} distinct images.
Reference: {profile.n_images} images, built {e(profile.created_at)}.</p>
<p class="verdict">{verdict}</p>
<table><tr><th>detector</th><th>result</th><th>p-value</th><th>threshold</th><th>distance</th>
<th>n ref</th><th>n window</th><th>detail</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>
<div class="plots">
{pca}
<img alt="confidence histograms" src="data:image/png;base64,{figs['confidence']}"/>
<img alt="image statistics" src="data:image/png;base64,{figs['image_stats']}" style="max-width: 96%"/>
</div>
<h2>Selected for labeling ({len(report.selected)} of {report.flagged} flagged)</h2>
<div>{''.join(cards) or '<p>none</p>'}</div>
</body></html>
"""


def write_html_report(
    path: Path,
    report: ScanReport,
    profile: ReferenceProfile,
    window: Window,
    selected: list[Flag],
    thumbnails: dict[str, np.ndarray],
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, profile, window, selected, thumbnails))
    return path
