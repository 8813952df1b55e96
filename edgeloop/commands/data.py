"""`edgeloop data generate|seed|refresh-links|allow-origin`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeloop.core.errors import user_errors


@click.group()
def data() -> None:
    """Sample data and seeding of blob storage + Label Studio."""


TASK_OPTION = click.option(
    "--task",
    type=click.Choice(["classification", "detection"]),
    default=None,
    help="classification: one class per image (ok, scratch, dent, stain); detection: 0-3 defects per image "
    "with their boxes (COCO annotations.json). Default: classification, or what the --from folder holds.",
)


def sample_dir(settings, task: str, shifted: bool = False) -> Path:
    variant = "shifted" if shifted else "base"
    return settings.state_dir / "sample" / (variant if task == "classification" else f"detection-{variant}")


def generate_sample(
    out: Path, task: str, per_class: int, images: int, size: int | None, seed: int, shifted: bool
):
    from edgeloop.local.sample_data import generate_dataset, generate_detection_dataset

    if task == "detection":
        return generate_detection_dataset(
            out, images=images, seed=seed, size=size or 192, shifted=shifted, progress=True
        )
    return generate_dataset(
        out, per_class=per_class, seed=seed, size=size or 128, shifted=shifted, progress=True
    )


@data.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: <state_dir>/sample/<variant>, or sample/detection-<variant> for detection).",
)
@TASK_OPTION
@click.option("--per-class", default=60, show_default=True, help="Images per class (classification).")
@click.option("--images", default=240, show_default=True, help="Images in all (detection).")
@click.option(
    "--size", type=int, default=None, help="Image side in pixels [default: 128; 192 for detection]."
)
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same images.")
@click.option("--shifted", is_flag=True, help="The shifted variant (new site: darker, colour cast, blur).")
@click.pass_obj
def generate(
    obj,
    out: Path | None,
    task: str | None,
    per_class: int,
    images: int,
    size: int | None,
    seed: int,
    shifted: bool,
) -> None:
    """Write seeded images of metal tags with metadata.jsonl: one class each (ok, scratch, dent, stain), or
    with --task detection 0-3 defects each (scratch, dent, stain) and their boxes in annotations.json."""
    task = task or "classification"
    out = out or sample_dir(obj.settings, task, shifted)
    samples = generate_sample(out, task, per_class, images, size, seed, shifted)
    if task == "detection":
        boxes = sum(len(b) for _, b in samples)
        empty = sum(1 for _, b in samples if not b)
        click.echo(
            f"wrote {len(samples)} images ({boxes} defect boxes, {empty} images without defects) to {out}"
        )
    else:
        click.echo(f"wrote {len(samples)} images to {out}")


@data.command()
@click.option(
    "--from",
    "source_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Your own folder: class sub-folders become annotations, loose images unlabeled tasks; with a COCO "
    "annotations.json its boxes become box annotations (detection). Default: the generated sample (made if missing).",
)
@click.option(
    "--project",
    "project_title",
    default=None,
    help="Label Studio project title (default from settings: labelstudio.project_title; "
    "<that>-detection for detection).",
)
@TASK_OPTION
@click.option(
    "--source", default=None, help="Name for this batch of images in blob storage (default: folder name)."
)
@click.option("--per-class", default=60, show_default=True, help="Sample images per class when generating.")
@click.option("--images", default=240, show_default=True, help="Sample images when generating for detection.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@user_errors
def seed(
    obj,
    source_dir: Path | None,
    project_title: str | None,
    task: str | None,
    source: str | None,
    per_class: int,
    images: int,
    as_json: bool,
) -> None:
    """Upload images to blob storage and create Label Studio tasks (+ labels). Re-running adds no duplicates."""
    from edgeloop.local.sample_data import COCO_FILE
    from edgeloop.local.seed import seed_directory

    settings = obj.settings
    if source_dir is None:
        task = task or "classification"
        source_dir = sample_dir(settings, task)
        if not (source_dir / "metadata.jsonl").exists():
            generate_sample(source_dir, task, per_class, images, None, 0, False)
        source = source or ("sample" if task == "classification" else "sample-detection")
    holds_boxes = (source_dir / COCO_FILE).exists()
    if task and (task == "detection") != holds_boxes:
        raise click.UsageError(
            f"--task {task}, but {source_dir} {'holds' if holds_boxes else 'has no'} a COCO {COCO_FILE}: "
            "detection folders hold their boxes there, classification folders one sub-folder per class"
        )
    if holds_boxes and project_title is None:
        project_title = detection_project(settings)
    report = seed_directory(settings, source_dir, source=source, project_title=project_title)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    r = report
    click.echo(
        f"project '{r.project_title}' (id {r.project_id}, {r.task}): {r.images_found} images; "
        f"{r.uploaded} uploaded, {r.already_in_storage} already in storage; "
        f"{r.tasks_created} tasks created, {r.tasks_existing} existed; "
        f"{r.annotations_created} labels submitted, {r.unlabeled_tasks} unlabeled tasks"
    )
    if r.skipped_files:
        click.echo(f"skipped {len(r.skipped_files)} non-image files, e.g. {r.skipped_files[:3]}")
    if r.duplicate_images:
        click.echo(f"skipped {r.duplicate_images} duplicate images (same content as another file)")


def detection_project(settings) -> str:
    """The default detection project: a project has one task type, so not the classification one's title."""
    return f"{settings.labelstudio.project_title}-detection"


@data.command("refresh-links")
@click.option(
    "--project", default=None, help="Label Studio project title (default: labelstudio.project_title)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@user_errors
def refresh_links(obj, project: str | None, as_json: bool) -> None:
    """Re-sign task image links that expire within half their lifetime (labelstudio.link_ttl_hours).

    Links in tasks are short-lived read-only SAS URLs; `edgeloop data seed` and every relabel
    delivery run this sync too. Schedule it (or the monitor) at least every link_ttl_hours / 2.
    """
    from edgeloop.core import labelstudio as lsx
    from edgeloop.core.blob import BlobStore

    settings = obj.settings
    title = project or settings.labelstudio.project_title
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, title)
    if proj is None:
        raise click.ClickException(
            f"no Label Studio project titled '{title}': seed one with `edgeloop data seed`"
        )
    report = lsx.refresh_image_links(
        ls, proj.id, BlobStore.from_settings(settings), settings.labelstudio.link_ttl_hours
    )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(
            f"{report.refreshed} of {report.tasks} task links re-signed (valid {settings.labelstudio.link_ttl_hours:g} h), "
            f"{report.still_valid} still valid, {report.no_blob_uri} without a blob URI left as they are"
        )


@data.command("allow-origin")
@click.argument("origins", nargs=-1)
@click.pass_obj
@user_errors
def allow_origin(obj, origins: tuple[str, ...]) -> None:
    """Let labelers' browsers load images: CORS rules on blob storage for Label Studio's origin.

    Allows Label Studio's URL from the settings, labelstudio.browser_origins, and ORIGINS
    (e.g. https://labels.example.com). `edgeloop stack up` does this for the local stack; run it
    once against a real storage account (EDGELOOP_BLOB__CONNECTION_STRING) on a cluster.
    """
    from edgeloop.core.blob import BlobStore

    settings = obj.settings
    allowed = list(dict.fromkeys([*settings.labelstudio_origins(), *(o.rstrip("/") for o in origins)]))
    store = BlobStore.from_settings(settings)
    store.allow_browser_origins(allowed)
    click.echo("blob storage now answers these origins: " + ", ".join(store.browser_origins()))
