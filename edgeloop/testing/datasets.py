"""An edgeloop dataset directory (``index.jsonl``) over a generated sample set, without blob storage."""

from __future__ import annotations

import json
from pathlib import Path


def sample_dataset_dir(sample_dir: Path, out: Path) -> Path:
    """Rows over the images of ``sample_dir`` (from :func:`edgeloop.local.sample_data.generate_dataset`):
    every 3rd image is test, the next val, the next train (files referenced by absolute path)."""
    from edgeloop.core.model_card import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    metas = [json.loads(x) for x in (sample_dir / "metadata.jsonl").read_text().splitlines() if x.strip()]
    rows = [
        {
            "sha256": sha256_file(sample_dir / m["file"]),
            "file": str((sample_dir / m["file"]).resolve()),
            "label": m["label"],
            "split": ("test", "val", "train")[i % 3],
            "image": f"az://images/sample/{m['file']}",
            "metadata": {"lighting": m["lighting"], "camera": m["camera"]},
        }
        for i, m in enumerate(metas)
    ]
    (out / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out
