"""The kustomize base and overlays, shipped as package data for `edgeloop deploy render`."""
