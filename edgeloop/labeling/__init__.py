"""Labeling helpers beyond the task conventions of :mod:`edgeloop.core.labelstudio`: the ML backend."""
