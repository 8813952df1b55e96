"""What a labeler sees in Label Studio's web page: images that load, choices, pre-annotations,
the reason a relabel task is there, and a submitted label that reaches the next label export."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.testing.stack import settings_on
from edgeloop.testing.waits import wait_until

LOAD_ERROR = "There was an issue loading URL"


@pytest.fixture(scope="module")
def settings(stack_settings, tmp_path_factory):
    """Own state dir and project against the session's stack."""
    return settings_on(
        stack_settings, tmp_path_factory.mktemp("browser-state"), project=f"labelers-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture(scope="module")
def project(settings, tmp_path_factory, mon_assets):
    """Seeded tasks (labeled sample images) plus relabel tasks delivered by a real drift scan."""
    from edgeloop.local.sample_data import generate_dataset
    from edgeloop.local.seed import seed_directory
    from edgeloop.monitoring.scan import ScanOptions, scan_window
    from edgeloop.monitoring.simulate import replay_images

    sample = tmp_path_factory.mktemp("browser-sample") / "site-a"
    generate_dataset(sample, per_class=2, size=64, seed=3)
    seeded = seed_directory(settings, sample, progress=False)

    ts = datetime.now(UTC)
    name = f"browser-{uuid.uuid4().hex[:6]}"
    replay_images(settings, mon_assets.model_dir, mon_assets.images("shifted"), ts=ts, model_name=name)
    report = scan_window(
        settings,
        mon_assets.model_dir,
        ts - timedelta(minutes=5),
        ts + timedelta(minutes=5),
        ScanOptions(payload_model=name, budget=2),
    )
    assert report.delivery["delivered"] >= 1, report.summary()

    ls = lsx.client(settings)
    proj = lsx.find_project(ls, settings.labelstudio.project_title)
    tasks = list(lsx.iter_tasks(ls, proj.id))
    seeded_task = next(t for t in tasks if t.data.get("source") == "site-a" and t.annotations)
    relabel_task = next(t for t in tasks if t.data.get("flag_reason"))
    assert seeded.tasks_created == 8
    return {"ls": ls, "id": proj.id, "seeded": seeded_task, "relabel": relabel_task}


@pytest.fixture(scope="module")
def logged_in(browser, settings, stack_settings):
    from selenium.webdriver.common.by import By

    url = settings.labelstudio_url()
    browser.get(f"{url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(settings.labelstudio.username)
    browser.find_element(By.NAME, "password").send_keys(stack_settings.secrets()["labelstudio_password"])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    _until(lambda: "/user/login" not in browser.current_url, f"Label Studio at {url} to accept the login")
    return browser


def _until(check, what: str, timeout_s: float = 60.0):
    """``check()``'s first truthy value; its errors mean the page is still rendering."""
    return wait_until(check, timeout_s, what, step_s=0.25, ignoring=(Exception,))


def _open_task(browser, settings, project_id: int, task_id: int) -> None:
    page = f"{settings.labelstudio_url()}/projects/{project_id}/data?task={task_id}"
    browser.get(page)
    _until(
        lambda: browser.execute_script("return document.querySelectorAll('.lsf-choice__checkbox').length"),
        f"the labeling view's choices at {page}",
    )


def _labeling_image(browser) -> dict:
    """The image the labeling view shows (not the data manager's thumbnails)."""
    return _until(
        lambda: browser.execute_script(
            """
            const img = document.querySelector('.lsf-main-view img, .lsf-image img, [class*="image-element"] img')
                || Array.from(document.querySelectorAll('img')).filter(i => i.src.startsWith('blob:')).pop();
            return img && img.complete && img.naturalWidth > 0
                ? {src: img.src, width: img.naturalWidth, height: img.naturalHeight} : null;
            """
        ),
        f"the labeling view's image at {browser.current_url} to load",
    )


def _choices(browser) -> dict[str, bool]:
    return browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('input.ant-checkbox-input'))"
        ".map(i => [i.name, i.checked]))"
    )


def _thumbnails(browser) -> list[dict]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('img')).filter(i => i.src.includes('/images/')"
        " || i.src.includes('/payloads/')).map(i => ({src: i.src, width: i.naturalWidth, complete: i.complete}))"
    )


def test_a_seeded_task_shows_its_image_and_its_label(logged_in, settings, project, screenshots):
    browser, task = logged_in, project["seeded"]
    _open_task(browser, settings, project["id"], task.id)
    image = _labeling_image(browser)
    assert image["width"] == 64 and image["height"] == 64
    assert LOAD_ERROR not in browser.find_element("tag name", "body").text
    choices = _choices(browser)
    assert set(choices) == {"ok", "scratch", "dent", "stain"}
    label = task.annotations[0]["result"][0]["value"]["choices"][0]
    assert choices[label] and sum(choices.values()) == 1
    thumbs = _until(
        lambda: [t for t in _thumbnails(browser) if t["complete"]],
        f"the data manager's thumbnails at {browser.current_url}",
    )
    assert all(t["width"] > 0 for t in thumbs), thumbs  # the data manager's images render too
    browser.save_screenshot(str(screenshots / "seeded-task.png"))


def test_a_relabel_task_shows_the_image_the_prediction_and_why(logged_in, settings, project, screenshots):
    browser, task = logged_in, project["relabel"]
    _open_task(browser, settings, project["id"], task.id)
    image = _labeling_image(browser)
    assert image["width"] > 0
    body = browser.find_element("tag name", "body").text
    assert LOAD_ERROR not in body
    assert "Flagged for relabeling" in body and task.data["flag_reason"] in body
    assert f"predicted '{task.data['predicted_label']}'" in body
    choices = _choices(browser)
    predicted = task.data["predicted_label"]
    assert choices[predicted] and sum(choices.values()) == 1, choices  # the pre-annotation is selected
    browser.save_screenshot(str(screenshots / "relabel-task.png"))


def test_a_label_submitted_in_the_browser_reaches_the_next_export(
    logged_in, settings, project, screenshots, tmp_path
):
    from selenium.webdriver.common.by import By

    from edgeloop.components.labels import import_labels

    browser, task = logged_in, project["relabel"]
    _open_task(browser, settings, project["id"], task.id)
    _labeling_image(browser)
    predicted = task.data["predicted_label"]
    other = next(c for c in ("ok", "scratch", "dent", "stain") if c != predicted)
    browser.find_element(By.CSS_SELECTOR, f"input.ant-checkbox-input[name='{other}']").click()
    _until(lambda: _choices(browser)[other] and not _choices(browser)[predicted], f"'{other}' selected")
    submit = browser.find_element(By.XPATH, "//button[normalize-space(.)='Submit']")
    submit.click()
    ls = project["ls"]
    _until(
        lambda: ls.tasks.get(task.id).annotations,
        f"the annotation of task {task.id} to be saved in Label Studio at {settings.labelstudio_url()}",
        timeout_s=30,
    )
    browser.save_screenshot(str(screenshots / "relabel-submitted.png"))

    report = import_labels(settings, None, tmp_path / "labels.jsonl")
    rows = {r.sha256: r for r in _manifest(tmp_path / "labels.jsonl")}
    assert rows[task.data["sha256"]].label == other, report.summary()


def test_links_in_tasks_are_short_lived_and_a_sync_renews_them(settings, project):
    from edgeloop.core.blob import BlobStore

    ls, task = project["ls"], project["seeded"]
    expiry = lsx.link_expiry(task.data["image"])
    assert expiry is not None
    assert timedelta(0) < expiry - datetime.now(UTC) <= timedelta(hours=settings.labelstudio.link_ttl_hours)

    store = BlobStore.from_settings(settings)
    later = datetime.now(UTC) + timedelta(hours=settings.labelstudio.link_ttl_hours * 0.75)
    report = lsx.refresh_image_links(ls, project["id"], store, settings.labelstudio.link_ttl_hours, now=later)
    assert report.refreshed == report.tasks > 0 and report.no_blob_uri == 0
    renewed = lsx.link_expiry(ls.tasks.get(task.id).data["image"])
    assert renewed is not None and renewed > expiry


def _manifest(path):
    from edgeloop.components.labels import read_manifest

    return read_manifest(path)
