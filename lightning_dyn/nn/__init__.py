"""``torch.nn.Module``s built on ``lightning_dyn.functional``."""

__all__: list[str] = []
