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


@pytest.fixture(scope="module")
def box_project(settings, tmp_path_factory):
    """A box project with one relabel task, pre-annotated with a model's boxes (the relabel queue)."""
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.model_card import sha256_bytes
    from edgeloop.local.sample_data import generate_detection_dataset, read_coco_boxes
    from edgeloop.monitoring.relabel import RelabelItem, RelabelQueue

    out = tmp_path_factory.mktemp("browser-boxes")
    generate_detection_dataset(out, images=6, seed=4, size=192)
    file, (w, h, boxes) = next((f, t) for f, t in sorted(read_coco_boxes(out).items()) if t[2])
    data = (out / file).read_bytes()
    store = BlobStore.from_settings(settings)
    store.ensure_container(settings.blob.payloads_container)
    sha = sha256_bytes(data)
    uri = store.upload(f"az://{settings.blob.payloads_container}/images/{sha}.png", data)
    dets = [{"label": b.label, "score": 0.7, "x": b.x, "y": b.y, "width": b.w, "height": b.h} for b in boxes]
    title = f"{settings.labelstudio.project_title}-boxes"
    item = RelabelItem(sha, str(uri), "", f"{len(dets)} defects", 0.7, "detector:1", "out_of_distribution",
                       0.9, ["scratch", "dent", "stain"], detections=dets, width=w, height=h)  # fmt: skip
    queue = RelabelQueue(tmp_path_factory.mktemp("box-outbox") / "outbox.sqlite")
    queue.enqueue(title, [item])
    assert queue.deliver(settings, title).delivered == 1
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, title)
    (task,) = lsx.iter_tasks(ls, proj.id)
    return {"ls": ls, "id": proj.id, "task": task, "boxes": boxes, "size": (w, h), "title": title}


def test_a_box_task_shows_the_models_boxes_and_a_drawn_box_reaches_the_next_export(
    logged_in, settings, box_project, screenshots, tmp_path
):
    """The labeler sees the image and the model's boxes, draws one more (a dent the model missed)
    and submits; the next import holds the model's boxes the labeler kept and the drawn one."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    from edgeloop.components.labels import import_labels

    browser, task, ls = logged_in, box_project["task"], box_project["ls"]
    page = f"{settings.labelstudio_url()}/projects/{box_project['id']}/data?task={task.id}"
    browser.get(page)
    image = _labeling_image(browser)
    w, h = box_project["size"]
    assert (image["width"], image["height"]) == (w, h)
    body = _until(
        lambda: (t := browser.find_element("tag name", "body").text) and "Regions" in t and t,
        f"the regions panel at {page}",
    )
    assert LOAD_ERROR not in body and "Flagged for relabeling" in body and "correct the boxes" in body
    for b in box_project["boxes"]:  # each pre-annotated box is listed with its class and score
        assert b.label in body
    assert body.count("0.70") >= len(box_project["boxes"])
    browser.save_screenshot(str(screenshots / "box-task.png"))

    browser.find_element(
        By.XPATH, "//*[contains(@class,'lsf-label') and starts-with(normalize-space(.),'dent')]"
    ).click()
    img = browser.execute_script(
        """
        const i = document.querySelector('.lsf-main-view img, .lsf-image img, [class*="image-element"] img')
            || Array.from(document.querySelectorAll('img')).filter(i => i.src.startsWith('blob:')).pop();
        return i;
        """
    )
    left, top, width, height = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height];", img
    )
    sx, sy = width / w, height / h  # displayed pixels per image pixel
    x0, y0, bw, bh = 130, 20, 40, 30  # in image pixels: a clean corner of the tag
    drag = ActionBuilder(browser)  # viewport coordinates: where a labeler's mouse goes
    drag.pointer_action.move_to_location(int(left + x0 * sx), int(top + y0 * sy)).pointer_down()
    drag.pointer_action.move_to_location(int(left + (x0 + bw) * sx), int(top + (y0 + bh) * sy)).pointer_up()
    drag.perform()
    browser.save_screenshot(str(screenshots / "box-task-drawn.png"))
    browser.find_element(By.XPATH, "//button[normalize-space(.)='Submit']").click()
    saved = _until(
        lambda: ls.tasks.get(task.id).annotations,
        f"the annotation of task {task.id} to be saved in Label Studio at {settings.labelstudio_url()}",
        timeout_s=30,
    )
    assert len(saved[0]["result"]) == len(box_project["boxes"]) + 1, saved[0]["result"]

    import_labels(settings, box_project["title"], tmp_path / "labels.jsonl")
    (row,) = _manifest(tmp_path / "labels.jsonl")
    got = row.box_list()
    drawn = [b for b in got if b.label == "dent" and abs(b.x - x0) < 3 and abs(b.y - y0) < 3]
    assert len(drawn) == 1, got
    assert drawn[0].w == pytest.approx(bw, abs=3) and drawn[0].h == pytest.approx(bh, abs=3)
    kept = [b for b in got if b not in drawn]
    assert sorted(b.label for b in kept) == sorted(b.label for b in box_project["boxes"])
