"""Hydra configs shipped as package data; the CLI reads them as ``pkg://lightning_dyn.configs``."""
