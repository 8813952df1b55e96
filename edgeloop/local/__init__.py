"""Local-only tooling: the services stack, sample data, seeding, and the demo."""
