import pytest


@pytest.fixture(scope="session")
def mon_assets(tmp_path_factory):
    """Sample sets (train/ref/same/shifted) and a tiny model with its reference profile, once per session."""
    from edgeloop.testing.monitoring import MonitorAssets

    return MonitorAssets(tmp_path_factory.getbasetemp() / "monitoring-assets").build()


@pytest.fixture(scope="session")
def mon_outputs(mon_assets):
    """Model outputs and image statistics per sample set: {name: (Outputs, stats)}."""
    from edgeloop.monitoring.model import ModelRunner
    from edgeloop.monitoring.profile import image_stats_batch

    runner = ModelRunner(mon_assets.model_dir)
    out = {}
    for name in ("ref", "same", "shifted", "fresh", "fresh_shifted"):
        paths = mon_assets.images(name)
        out[name] = (runner.run(paths), image_stats_batch(paths, runner.preprocess.size))
    return out
