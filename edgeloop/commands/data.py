"""`edgeloop data generate|seed|refresh-links|allow-origin`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeloop.core.errors import user_errors


@click.group()
def data() -> None:
    """Sample data and seeding of blob storage + Label Studio."""


@data.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: <state_dir>/sample/<variant>).",
)
@click.option("--per-class", default=60, show_default=True, help="Images per class.")
@click.option("--size", default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same images.")
@click.option("--shifted", is_flag=True, help="The shifted variant (new site: darker, colour cast, blur).")
@click.pass_obj
def generate(obj, out: Path | None, per_class: int, size: int, seed: int, shifted: bool) -> None:
    """Write seeded images of metal tags (classes ok, scratch, dent, stain) with metadata.jsonl."""
    from edgeloop.local.sample_data import generate_dataset

    out = out or obj.settings.state_dir / "sample" / ("shifted" if shifted else "base")
    metas = generate_dataset(out, per_class=per_class, seed=seed, size=size, shifted=shifted, progress=True)
    click.echo(f"wrote {len(metas)} images to {out}")


@data.command()
@click.option(
    "--from",
    "source_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Your own folder: class sub-folders become annotations, loose images unlabeled tasks. "
    "Default: the generated sample (made if missing).",
)
@click.option(
    "--project",
    "project_title",
    default=None,
    help="Label Studio project title (default from settings: labelstudio.project_title).",
)
@click.option(
    "--source", default=None, help="Name for this batch of images in blob storage (default: folder name)."
)
@click.option("--per-class", default=60, show_default=True, help="Sample images per class when generating.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@user_errors
def seed(
    obj, source_dir: Path | None, project_title: str | None, source: str | None, per_class: int, as_json: bool
) -> None:
    """Upload images to blob storage and create Label Studio tasks (+ labels). Re-running adds no duplicates."""
    from edgeloop.local.sample_data import generate_dataset
    from edgeloop.local.seed import seed_directory

    settings = obj.settings
    if source_dir is None:
        source_dir = settings.state_dir / "sample" / "base"
        if not (source_dir / "metadata.jsonl").exists():
            generate_dataset(source_dir, per_class=per_class, progress=True)
        source = source or "sample"
    report = seed_directory(settings, source_dir, source=source, project_title=project_title)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    r = report
    click.echo(
        f"project '{r.project_title}' (id {r.project_id}): {r.images_found} images; "
        f"{r.uploaded} uploaded, {r.already_in_storage} already in storage; "
        f"{r.tasks_created} tasks created, {r.tasks_existing} existed; "
        f"{r.annotations_created} labels submitted, {r.unlabeled_tasks} unlabeled tasks"
    )
    if r.skipped_files:
        click.echo(f"skipped {len(r.skipped_files)} non-image files, e.g. {r.skipped_files[:3]}")
    if r.duplicate_images:
        click.echo(f"skipped {r.duplicate_images} duplicate images (same content as another file)")


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
