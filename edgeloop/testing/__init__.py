"""The testing kit: tiny models, frames, videos, OIP request bodies, process helpers.

Used by the tests and benchmarks; never copied into a runtime image."""
