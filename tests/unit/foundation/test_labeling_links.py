"""Image links for labelers: short-lived, renewable, and allowed from Label Studio's origin."""

from __future__ import annotations

from datetime import UTC, datetime

from edgeloop.core import labelstudio as lsx
from edgeloop.core.blob import BlobStore
from edgeloop.core.config import load_settings

CONN = (
    "DefaultEndpointsProtocol=http;AccountName=edgeloop;AccountKey=" + "a" * 88 + ";"
    "BlobEndpoint=http://127.0.0.1:10000/edgeloop;"
)


def test_sas_links_expire_after_the_ttl_not_after_a_year():
    url = BlobStore(CONN).sas_url("az://images/x.png", hours=2)
    left = lsx.link_expiry(url) - datetime.now(UTC)
    assert 7000 < left.total_seconds() <= 7200


def test_link_expiry_is_none_for_links_that_are_not_sas():
    assert lsx.link_expiry("http://example.com/x.png") is None
    assert lsx.link_expiry("http://example.com/x.png?se=not-a-date") is None


def test_the_labeling_page_origins_come_from_the_settings(tmp_path):
    s = load_settings(
        state_dir=tmp_path,
        labelstudio={"url": "http://127.0.0.1:8080/", "browser_origins": ["https://labels.example.com/"]},
    )
    assert s.labelstudio_origins() == [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "https://labels.example.com",
    ]
    assert load_settings(
        state_dir=tmp_path, labelstudio={"url": "https://ls.plant.example"}
    ).labelstudio_origins() == ["https://ls.plant.example"]


def test_the_label_config_shows_the_note_above_the_choices():
    xml = lsx.label_config(["ok", "dent"])
    assert xml.index('value="$note"') < xml.index("<Choices") and "<Header" in xml
    assert "predicted 'dent'" in lsx.relabel_note("out_of_distribution", 1.5, "dent", "m:3")


def test_tasks_without_a_note_stay_valid_for_label_studio():
    """Label Studio requires task keys only for object tags (Image, Text...), not for a Header."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(lsx.label_config(["ok"]))
    needs = {
        el.get("value")
        for el in root.iter()
        if el.tag not in ("Header", "View") and el.get("value", "").startswith("$")
    }
    assert needs == {"$image"}
