"""Detector of opposing groups of training examples (Rosenfeld & Risteski, 2311.04163)."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_dyn._checks import check_callable, check_positive_int
from lightning_dyn.callbacks._adapters import (
    LOGITS_FN_SIGNATURE,
    ForwardFirstInput,
    LogitsFn,
    per_example_cross_entropy,
)
from lightning_dyn.callbacks._divergence import DivergenceGuard
from lightning_dyn.callbacks._features import FeatureCapture, last_linear_name
from lightning_dyn.callbacks._intervals import due_at_step
from lightning_dyn.callbacks._measurement import is_sharded, probe_gradients, probe_pass, whole
from lightning_dyn.callbacks._outlier_report import log_detection, pair_record
from lightning_dyn.callbacks._probe import Probe, build_probe, chunked, gather_by_position, take
from lightning_dyn.functional.losses import ClassificationLoss, LossFn, classification_loss
from lightning_dyn.functional.opposing_groups import (
    OpposingGroup,
    OpposingSearchConfig,
    candidate_groups,
    flag_pairs,
    track_groups,
)
from lightning_dyn.functional.opposing_signals import (
    group_gradient_cosine,
    losses_per_example,
    sketch_gradient,
)
from lightning_dyn.functional.pair_search import group_loss_series

GroupFn = Callable[[Tensor, Any], Tensor]


class OutlierPairDetector(pl.Callback):
    """Finds groups of training examples that pull the network in opposite directions.

    Rosenfeld & Risteski (arXiv 2311.04163) show that groups of examples sharing a large,
    consistent feature but differing in label (sky in planes vs. boats) have opposing gradients;
    once the network sharpens, their losses oscillate in antiphase and can make the whole loss
    spike. Every ``every_n_steps`` optimizer steps this callback evaluates the per-example loss
    of a fixed probe of training examples (drawn at ``on_train_start``, converted to the training
    precision; eval mode, no ``.grad`` touched, every submodule's own mode restored) into a ring
    buffer of the last ``window`` evaluations (``probe × window`` floats). Every
    ``grad_check_every`` evaluations, once the buffer is full, it searches
    (``functional.opposing_groups``):

    1. the ``k`` examples whose loss rose most and fell most since the previous evaluation are
       grouped by ``group_fn`` (every probe example of a candidate's group joins), or by k-means
       (``n_clusters``) on their penultimate features, split by target and extended to the probe
       examples within each cluster's radius;
    2. a pair of groups is *antiphase* when both losses flip direction ``min_flips`` times in the
       window and the correlation of their changes is below ``-corr_threshold``; for the
       ``max_pairs`` most antiphase pairs the cosine of the groups' mean-loss gradients is
       computed (exactly, or on a ``sketch_dim`` random projection) and the pair is *flagged*
       below ``-cos_threshold``;
    3. a flagged pair is a fragment of an opposing group: it starts a tracked group or joins the
       one it overlaps or moves with. While a tracked group's sides stay antiphase with opposing
       gradients, a probe example joins a side after swinging with it (regression coefficient of
       its loss changes on the side's at least ``join_amplitude``) at ``persistence`` searches in
       a row, and leaves after ``persistence`` searches of swinging as much without following
       it; an example whose loss stopped moving (learned) stays. With ``split_by_target`` only
       examples of a side's label, and with features only examples nearer the side's feature
       centroid than the rest of that label's, can join it. Groups that meet merge.

    Logged every evaluation: ``opposing/probe_loss``; every search: ``opposing/num_groups``
    (candidate groups), ``opposing/num_flagged`` (flagged pairs), ``opposing/tracked_groups``,
    ``opposing/largest_group``, and for the search's reported pair (the first flagged, else the
    most antiphase) ``opposing/pair_corr``, ``opposing/group_loss_a``, ``opposing/group_loss_b``,
    ``opposing/pair_grad_cos``. On a search that flags a pair, at most once per ``report_every``
    evaluations, a table of the tracked groups with pictures of their examples and a figure of
    their losses over the window go to W&B, or to files under the logger's directory.

    ``groups`` lists the tracked groups (dataset indices of both sides, first step, sizes,
    persistence, gradient cosine); ``detections`` the last ``max_detections`` flagged fragments.
    Both and the ring buffer are saved in checkpoints: a resumed run continues exactly. Under DDP
    each rank evaluates every ``world_size``-th probe example and the losses (and features) are
    all-gathered, group gradients all-reduced: every rank takes the same decisions and the same
    collectives. Per-token targets (logits ``(N, T, K)``, targets ``(N, T)``) give each example
    the mean loss of its positions. Non-finite probe losses (a diverged run) skip the search
    with a warning naming the step; training goes on.

    Args:
        probe: training-set indices, a ``DataLoader`` (read once, without augmentation), or
            ``None`` for ``probe_size`` training examples drawn at random with ``seed``.
        probe_size: probe size when ``probe`` is ``None``.
        every_n_steps: evaluate the probe every this many optimizer steps.
        k, n_clusters, split_by_target, corr_threshold, cos_threshold, min_flips,
            min_group_size, max_pairs, join_amplitude, persistence: the search and grouping
            settings, :class:`~lightning_dyn.functional.opposing_groups.OpposingSearchConfig`.
        window: evaluations kept in the ring buffer (at least 3).
        group_fn: ``(indices, batch) -> (n,) int group ids`` for the probe examples ``indices``
            (dataset indices) held in ``batch``; ``None`` clusters features.
        feature_module: name of the submodule whose output is clustered; ``None`` uses the
            input of the last ``nn.Linear`` (the penultimate features of a classifier).
        grad_check_every: search every this many evaluations.
        sketch_dim: compare gradients through a random projection to this many numbers.
        loss_fn: a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES`
            (``"softmax"``, ``"stablemax"``, ``"square"``) or a callable
            ``loss_fn(outputs, targets, reduction="none")`` giving per-example losses; ``None``
            is softmax cross-entropy for any logits layout (per position for per-token targets,
            then averaged).
        logits_fn: ``(pl_module, batch) -> (outputs, targets)``; default ``pl_module(batch[0])``
            and ``batch[1]``.
        batch_size: examples per forward pass on the probe.
        max_media_examples: examples pictured per group in the table.
        report_every: evaluations between two reports (a report costs about 0.1-0.3 s).
        max_detections: flagged fragments kept in ``detections`` (and in checkpoints).
        seed: seed of the probe draw, k-means and the gradient sketch.
    """

    def __init__(
        self,
        probe: Sequence[int] | DataLoader | None = None,
        probe_size: int = 2048,
        every_n_steps: int = 1,
        k: int = 32,
        window: int = 8,
        group_fn: GroupFn | None = None,
        feature_module: str | None = None,
        n_clusters: int = 4,
        split_by_target: bool = True,
        grad_check_every: int = 1,
        sketch_dim: int | None = None,
        corr_threshold: float = 0.5,
        cos_threshold: float = 0.8,
        min_flips: int = 2,
        min_group_size: int = 4,
        max_pairs: int = 3,
        join_amplitude: float = 0.5,
        persistence: int = 3,
        loss_fn: ClassificationLoss | LossFn | None = None,
        logits_fn: LogitsFn | None = None,
        batch_size: int = 1024,
        max_media_examples: int = 8,
        report_every: int = 100,
        max_detections: int = 64,
        seed: int = 0,
    ) -> None:
        self.config = OpposingSearchConfig(
            k=k,
            n_clusters=n_clusters,
            split_by_target=split_by_target,
            corr_threshold=corr_threshold,
            cos_threshold=cos_threshold,
            min_flips=min_flips,
            min_group_size=min_group_size,
            max_pairs=max_pairs,
            join_amplitude=join_amplitude,
            persistence=persistence,
            seed=seed,
        )
        for name, value, minimum in (
            ("probe_size", probe_size, 1),
            ("every_n_steps", every_n_steps, 1),
            ("window", window, 3),
            ("grad_check_every", grad_check_every, 1),
            ("batch_size", batch_size, 1),
            ("max_media_examples", max_media_examples, 0),
            ("report_every", report_every, 1),
            ("max_detections", max_detections, 1),
        ):
            check_positive_int(name, value, minimum)
        if sketch_dim is not None:
            check_positive_int("sketch_dim", sketch_dim)
        if min_flips > window - 2:
            raise ValueError(
                f"min_flips must be at most window - 2 = {window - 2} (the most sign flips "
                f"{window} evaluations can hold); got {min_flips}."
            )
        valid_probe = isinstance(probe, DataLoader | Sequence | Tensor) and not isinstance(
            probe, str
        )
        if probe is not None and not valid_probe:
            raise ValueError(
                f"probe must be a list of training-set indices, a DataLoader or None; got "
                f"{type(probe).__name__}."
            )
        check_callable("group_fn", group_fn, "(indices, batch) -> group ids")
        if isinstance(loss_fn, str):
            loss_fn = classification_loss(loss_fn, "loss_fn")
        check_callable("loss_fn", loss_fn, '(outputs, targets, reduction="none") -> losses')
        check_callable("logits_fn", logits_fn, LOGITS_FN_SIGNATURE)
        if group_fn is not None and feature_module is not None:
            raise ValueError("give group_fn or feature_module, not both: groups come from one.")
        self.probe_spec, self.probe_size, self.every_n_steps = probe, probe_size, every_n_steps
        self.window, self.group_fn, self.feature_module = window, group_fn, feature_module
        self.grad_check_every, self.sketch_dim = grad_check_every, sketch_dim
        self.loss_fn, self.logits_fn = loss_fn, logits_fn or ForwardFirstInput(type(self).__name__)
        self.batch_size, self.max_media_examples = batch_size, max_media_examples
        self.report_every, self.seed = report_every, seed
        self.detections: deque[dict[str, Any]] = deque(maxlen=max_detections)
        self._capture = FeatureCapture()
        self._probe: Probe | None = None
        self._targets: Tensor | None = None  # integer class targets of the probe, if any
        self._targets_read = False
        self._user_groups: Tensor | None = None
        self._losses: Tensor | None = None  # (window, probe) ring buffer, CPU
        self._steps = torch.full((window,), -1, dtype=torch.long)
        self._evaluations = 0
        self._last_step = -1
        self._last_media: int | None = None
        self._num_detections = 0
        self._groups: list[OpposingGroup] = []
        self._guard = DivergenceGuard(type(self).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, window=self.window)

    # --- lifecycle ------------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A new fit may bring new data: draw the probe and read its targets again.
        self._probe, self._targets, self._targets_read = None, None, False
        self._guard.start_fit()
        if self.group_fn is not None:
            return
        name = self.feature_module or last_linear_name(pl_module)
        if name is None:
            raise ValueError(
                f"{type(pl_module).__name__} has no nn.Linear whose input could serve as "
                "penultimate features; pass feature_module=<submodule name> or group_fn."
            )
        self._capture.attach(pl_module, name, of_input=self.feature_module is None)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Drawn here, where the training loader exists: a probe that cannot work fails at once.
        self._probe = self._draw_probe(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._capture.detach()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if not due_at_step(step, self._last_step, self.every_n_steps):
            return  # a micro-batch of an accumulating step, or not an evaluating step
        self._last_step = step
        search = (
            self._evaluations + 1 >= self.window
            and (self._evaluations + 1) % self.grad_check_every == 0
        )
        try:
            with probe_pass(pl_module):
                losses, features = self._evaluate(trainer, pl_module, capture=search)
                self._push(step, losses)
                metrics = {"probe_loss": float(losses.mean())}
                if search:
                    metrics.update(self._search(trainer, pl_module, features))
        finally:
            self._capture.capturing = False
        for key, value in metrics.items():
            pl_module.log(f"opposing/{key}", value, on_step=True, on_epoch=False)

    # --- probe evaluation -----------------------------------------------------------------------

    def _draw_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Probe:
        probe = build_probe(trainer, self.probe_spec, self.probe_size, self.seed)
        if self._losses is not None and self._losses.shape[1] != probe.size:
            raise ValueError(
                f"the probe has {probe.size} examples but the restored buffer holds "
                f"{self._losses.shape[1]}: resume with the same probe."
            )
        if self.group_fn is not None:
            local = torch.as_tensor(
                self.group_fn(probe.indices[probe.positions], probe.batch), device=pl_module.device
            )
            if local.shape != probe.positions.shape or local.is_floating_point():
                raise ValueError(
                    f"group_fn must return ({len(probe.positions)},) integer group ids; got "
                    f"{tuple(local.shape)} {local.dtype}."
                )
            self._user_groups = gather_by_position(trainer, probe, local.long()).cpu()
        return probe

    @torch.no_grad()
    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, capture: bool
    ) -> tuple[Tensor, Tensor | None]:
        probe = self._probe
        capture = capture and self.group_fn is None
        self._capture.capturing = capture
        losses, targets = [], []
        most = -(-probe.size // trainer.world_size) if is_sharded(pl_module) else None
        for rows in chunked(torch.arange(len(probe.positions)), self.batch_size, most):
            outputs, target = self.logits_fn(pl_module, take(probe.batch, rows))
            losses.append(losses_per_example(outputs, target, self._loss))
            targets.append(target)
        self._capture.capturing = False
        local = torch.cat(losses).float()
        full = gather_by_position(trainer, probe, local).cpu()
        if not self._targets_read:
            self._targets_read = True
            target = torch.cat(targets)
            usable = target.ndim == 1 and not target.is_floating_point()
            self._targets = gather_by_position(trainer, probe, target).cpu() if usable else None
        features = None
        if capture:
            features = gather_by_position(trainer, probe, self._capture.take()).cpu()
        return full, features

    def _loss(self, outputs: Tensor, target: Tensor, reduction: str = "none") -> Tensor:
        if self.loss_fn is None:
            return per_example_cross_entropy(outputs, target, type(self).__name__)
        return self.loss_fn(outputs, target, reduction=reduction)

    def _push(self, step: int, losses: Tensor) -> None:
        if self._losses is None:
            self._losses = torch.zeros(self.window, losses.shape[0])
        row = self._evaluations % self.window
        self._losses[row] = losses
        self._steps[row] = step
        self._evaluations += 1

    def _ordered(self) -> tuple[Tensor, Tensor]:
        """The buffer's losses and steps, oldest evaluation first."""
        shift = -(self._evaluations % self.window)
        return self._losses.roll(shift, dims=0), self._steps.roll(shift)

    # --- search and grouping -------------------------------------------------------------------

    def _search(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, features: Tensor | None
    ) -> dict[str, float]:
        window, steps = self._ordered()
        # The losses were gathered: every rank sees the same window and takes the same branch.
        if not self._guard.all_finite(trainer, [window], synced=True):
            return {"num_groups": 0.0, "num_flagged": 0.0}
        cfg, step = self.config, int(steps[-1])
        groups, names = candidate_groups(window, cfg, features, self._user_groups, self._targets)
        metrics = {"num_groups": float(len(names)), "num_flagged": 0.0}
        gradient = functools.cache(lambda g: self._group_gradient(trainer, pl_module, groups == g))

        def cosine(a: int, b: int) -> float:  # the gradient check of candidate groups a, b
            return float(group_gradient_cosine(gradient(a), gradient(b)))

        def side_cosine(side_a: Tensor, side_b: Tensor) -> float:  # of a tracked group's sides
            grads = (self._group_gradient(trainer, pl_module, m) for m in (side_a, side_b))
            return float(group_gradient_cosine(*grads))

        flagged = []
        if len(names) >= 2:
            series = group_loss_series(window, groups, len(names))
            flagged, found = flag_pairs(series, cfg, cosine)
            metrics.update(found)
        fragments = [
            ((groups == a, groups == b), cos, (names[a], names[b])) for cos, a, b in flagged
        ]
        for sides, cos, pair_names in fragments:
            self.detections.append(
                pair_record(self._probe, step, pair_names, sides, steps, window, cos)
            )
        self._num_detections += len(fragments)
        labels = self._targets if cfg.split_by_target else None
        self._groups = track_groups(
            self._groups, window, step, fragments, side_cosine, cfg, labels, features
        )
        metrics["tracked_groups"] = float(len(self._groups))
        if self._groups:
            metrics["largest_group"] = float(max(sum(g.sizes) for g in self._groups))
        due = self._last_media is None or self._evaluations - self._last_media >= self.report_every
        if flagged and due:
            self._last_media = self._evaluations
            records = [
                pair_record(
                    self._probe, step, g.names, tuple(g.members), steps, window, g.grad_cos, g
                )
                for g in self._groups
            ]
            log_detection(trainer, self._probe, records, self.max_media_examples)
        return metrics

    def _group_gradient(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, in_group: Tensor
    ) -> Tensor:
        """Gradient of the summed loss over a group (all ranks' shares), flat or sketched.

        The sum, not the mean, so that ranks' shares add up; cosines do not see the scale. Under
        FSDP2 the gradients come reduced (averaged) over the ranks, sharded, and are gathered.
        """
        params = [p for p in pl_module.parameters() if p.requires_grad]
        totals = [torch.zeros_like(p) for p in params]
        rows = in_group[self._probe.positions].nonzero().flatten()
        world = trainer.world_size
        most = None
        if is_sharded(pl_module):
            most = max(int(in_group[r::world].sum()) for r in range(world))
        reduced = False
        with torch.enable_grad():
            for chunk_rows in chunked(rows, self.batch_size, most):
                outputs, target = self.logits_fn(pl_module, take(self._probe.batch, chunk_rows))
                loss = losses_per_example(outputs, target, self._loss).sum()
                grads, reduced = probe_gradients(pl_module, loss, params)
                for total, g in zip(totals, grads, strict=True):
                    if g is not None:
                        total.add_(g)
        totals = [whole(t) for t in totals]
        if self.sketch_dim is not None:
            vector = sketch_gradient(totals, self.sketch_dim, self.seed)
        else:
            vector = torch.cat([t.reshape(-1).float() for t in totals])
        return vector if reduced else trainer.strategy.reduce(vector, reduce_op="sum")

    # --- results and checkpoints ----------------------------------------------------------------

    @property
    def groups(self) -> list[dict[str, Any]]:
        """The tracked opposing groups, oldest first: the dataset indices of their two sides,
        names, sizes, first and last active step, persistence (active searches) and the last
        gradient cosine of the sides (probe positions instead of indices before the probe is
        drawn)."""
        if self._probe is None:  # restored from a checkpoint, before a fit draws the probe
            return [g.describe(torch.arange(g.members.shape[1])) for g in self._groups]
        return [g.describe(self._probe.indices) for g in self._groups]

    def flagged_indices(self) -> list[int]:
        """Sorted dataset indices of every example in a tracked group."""
        return sorted({i for group in self.groups for side in group["indices"] for i in side})

    def summarize(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Lines for the end-of-run summary of the ``lightning-dyn`` CLI."""
        if not self._groups:
            return {"opposing groups": "none"}
        first = min(self._groups, key=lambda g: g.first_step)
        largest = max(self._groups, key=lambda g: sum(g.sizes))
        return {
            "opposing groups": f"{len(self._groups)}, first at step {first.first_step}",
            "largest opposing group": f"{largest.names[0]} ({largest.sizes[0]}) vs "
            f"{largest.names[1]} ({largest.sizes[1]}), active at {largest.persistence} searches",
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": None if self._losses is None else self._losses.clone(),
            "steps": self._steps.clone(),
            "evaluations": self._evaluations,
            "last_step": self._last_step,
            "last_media": self._last_media,
            "detections": list(self.detections),
            "num_detections": self._num_detections,
            "groups": [g.state_dict() for g in self._groups],
            **self._guard.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._losses = state_dict["losses"]
        self._steps = state_dict["steps"]
        self._evaluations = state_dict["evaluations"]
        self._last_step = state_dict["last_step"]
        self._last_media = state_dict["last_media"]
        self.detections.clear()
        self.detections.extend(state_dict["detections"])
        self._num_detections = state_dict["num_detections"]
        # A checkpoint from before the tracked groups has none: tracking starts afresh.
        self._groups = [OpposingGroup.from_state_dict(g) for g in state_dict.get("groups", [])]
        self._guard.load_state_dict(state_dict)
