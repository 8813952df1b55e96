import pytest


@pytest.fixture(scope="session")
def mon_assets(tmp_path_factory):
    """Sample sets (train/ref/same/shifted) and a tiny model with its reference profile, once per session."""
    from edgeloop.testing.monitoring import MonitorAssets

    return MonitorAssets(tmp_path_factory.getbasetemp() / "monitoring-assets").build()
