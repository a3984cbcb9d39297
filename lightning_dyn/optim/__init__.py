"""``torch.optim.Optimizer``s and parameter-grouping helpers."""

__all__: list[str] = []
