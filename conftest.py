"""Root pytest configuration (applies to tests/ and notebooks/)."""

import matplotlib

matplotlib.use("Agg")  # never through MPLBACKEND: it would leak into notebook kernels


def pytest_collectstart(collector):
    # nbval compares stderr in checked cells; warnings and progress bars must not fail a notebook
    if hasattr(collector, "skip_compare"):
        collector.skip_compare += ("stderr",)
