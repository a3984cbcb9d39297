"""Lightning strategies, only for methods that themselves span devices."""

from lightning_dyn.strategies.expert_parallel import ExpertParallelStrategy

__all__ = ["ExpertParallelStrategy"]
