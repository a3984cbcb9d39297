"""LightningModule mixins for methods that must own part of the module."""

__all__: list[str] = []
