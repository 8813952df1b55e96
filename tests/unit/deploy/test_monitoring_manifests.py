"""The drift CronJob keeps its relabel outbox on a volume that outlives the Job."""

from __future__ import annotations

import pytest

OVERLAYS = ["edge-cpu", "edge-gpu", "staging", "keda"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_drift_scan_state_dir_is_on_a_persistent_volume_claim(overlay, rendered_overlays):
    objs = rendered_overlays[overlay]
    (cron,) = [o for o in objs if o["kind"] == "CronJob" and o["metadata"]["name"] == "edgeloop-drift-scan"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    state_dir = env["EDGELOOP_STATE_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    volume = volumes[mounts[state_dir]]  # the state dir is a mount point of its own, not under /tmp
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvcs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    assert claim in pvcs
    assert pvcs[claim]["metadata"]["namespace"] == cron["metadata"]["namespace"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # writable by the scan
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
