"""Typed run configuration: one schema per Hydra group, composition, and range checks."""
