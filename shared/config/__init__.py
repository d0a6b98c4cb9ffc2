"""The experiment config: one YAML parsed into typed, frozen dataclasses, and the Flower run
and node configs derived from it."""
