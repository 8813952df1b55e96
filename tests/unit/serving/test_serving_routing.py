"""Canary routing (share, stickiness, parsing) and the canary evidence computed from payload records."""

from __future__ import annotations

import pytest

from edgeloop.core.payload_log import PayloadRecord
from edgeloop.serving.canary import compare_versions, routed_requests
from edgeloop.serving.errors import InvalidInputError
from edgeloop.serving.routing import Canary, TrafficPolicy


def test_keyless_requests_get_exactly_the_canary_share():
    policy = TrafficPolicy(Canary("candidate", 10))
    picks = [policy.to_canary(None) for _ in range(2000)]
    assert sum(picks) == 200
    assert sum(picks[:100]) == 10  # spread out, not bunched at one end


def test_keyed_requests_are_sticky_and_near_the_share():
    policy = TrafficPolicy(Canary("candidate", 10))
    first = {f"camera-{i}": policy.to_canary(f"camera-{i}") for i in range(2000)}
    assert 140 <= sum(first.values()) <= 260
    assert all(policy.to_canary(k) == v for k, v in first.items())
    # raising the share keeps every client already on the canary there
    wider = TrafficPolicy(Canary("candidate", 50))
    assert all(wider.to_canary(k) for k, v in first.items() if v)


def test_no_canary_or_zero_percent_never_reroutes():
    assert not any(TrafficPolicy().to_canary(None) for _ in range(100))
    assert not any(TrafficPolicy(Canary("c", 0)).to_canary(f"k{i}") for i in range(100))


@pytest.mark.parametrize("text", ["candidate", "candidate=abc", "=10", "candidate=150", "candidate=-1"])
def test_bad_canary_flags_name_the_fix(text):
    with pytest.raises(InvalidInputError, match="ALIAS=PERCENT|percent"):
        Canary.parse(text)


def test_canary_parse_accepts_a_percent_sign():
    assert Canary.parse("candidate=12.5%") == Canary("candidate", 12.5)


def _rec(version: str, rid: str, sha: str, label: str, score: float) -> PayloadRecord:
    return PayloadRecord(
        ts=0.0,
        model="m",
        version=version,
        label=label,
        score=score,
        probabilities=[score, 1 - score],
        image_sha256=sha,
        image_uri=f"az://p/images/{sha}.png",
        request_id=rid,
    )


def test_compare_versions_pairs_by_request_and_image():
    records = []
    for i in range(400):
        records.append(_rec("1", f"r{i}", f"s{i}", "ok", 0.9))
        records.append(_rec("2", f"r{i}", f"s{i}", "ok" if i % 100 else "dent", 0.91))
    records.append(_rec("2", "unpaired", "x", "dent", 0.1))  # no champion record: ignored
    records.append(_rec("1", None, "y", "ok", 0.9))  # type: ignore[arg-type]
    report = compare_versions(records, "1", "2", "m")
    assert report.pairs == 400
    assert report.agreement == pytest.approx(0.99)
    assert 0.97 < report.agreement_low < 0.99
    assert report.confidence_delta == pytest.approx(0.01)
    assert report.check(min_pairs=200) == []
    assert report.check(min_pairs=1000)[0].startswith("only 400 images")


def test_a_disagreeing_or_less_confident_candidate_is_refused():
    records = []
    for i in range(300):
        records.append(_rec("1", f"r{i}", f"s{i}", "ok", 0.9))
        records.append(_rec("2", f"r{i}", f"s{i}", "ok" if i % 5 else "dent", 0.8 + (i % 3) * 0.01))
    reasons = compare_versions(records, "1", "2").check(min_pairs=100)
    assert len(reasons) == 2
    assert "agreement" in reasons[0] and "confidence drops" in reasons[1]


def test_routed_requests_reads_the_servers_metrics():
    text = (
        "# HELP edgeloop_serving_routed_requests_total r\n"
        "# TYPE edgeloop_serving_routed_requests_total counter\n"
        'edgeloop_serving_routed_requests_total{model="m",route="champion",version="1"} 180.0\n'
        'edgeloop_serving_routed_requests_total{model="m",route="pinned",version="1"} 5.0\n'
        'edgeloop_serving_routed_requests_total{model="m",route="canary",version="2"} 20.0\n'
        'edgeloop_serving_routed_requests_total{model="other",route="canary",version="2"} 7.0\n'
    )
    assert routed_requests(text, "m") == {"1": 185, "2": 20}
