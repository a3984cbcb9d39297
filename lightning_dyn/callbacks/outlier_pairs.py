"""Detector of paired outlier groups with opposing signals (Rosenfeld & Risteski, 2311.04163)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_dyn._checks import check_bool, check_callable, check_fraction, check_positive_int
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
from lightning_dyn.callbacks._outlier_report import log_detection
from lightning_dyn.callbacks._probe import Probe, build_probe, chunked, gather_by_position, take
from lightning_dyn.functional.opposing_signals import (
    group_gradient_cosine,
    mean_per_example,
    sketch_gradient,
    top_loss_changes,
)
from lightning_dyn.functional.pair_search import (
    antiphase_matrix,
    feature_groups,
    group_loss_series,
    oscillation_count,
)

GroupFn = Callable[[Tensor, Any], Tensor]
LossFn = Callable[..., Tensor]


class OutlierPairDetector(pl.Callback):
    """Finds pairs of training-example groups that pull the network in opposite directions.

    Rosenfeld & Risteski (arXiv 2311.04163) show that groups of examples sharing a large,
    consistent feature but differing in label (sky in planes vs. boats) have opposing gradients;
    once the network sharpens, their losses oscillate in antiphase and can make the whole loss
    spike. Every ``every_n_steps`` optimizer steps this callback evaluates the per-example loss
    of a fixed probe of training examples (drawn at ``on_train_start`` and converted to the
    training precision; eval mode, no ``.grad`` touched, every submodule's own mode restored)
    into a ring buffer of the last ``window`` evaluations (``probe × window`` floats, whatever
    the length of training). Every ``grad_check_every`` evaluations, once the buffer is full, it
    searches for opposing pairs:

    1. the ``k`` examples whose loss rose most and the ``k`` whose loss fell most since the
       previous evaluation are the candidates (the paper's ranking);
    2. they are grouped by ``group_fn`` (e.g. label or a user attribute: every probe example of a
       candidate's group joins), or else by k-means (``n_clusters``) on their penultimate
       features, each cluster split by target and extended to the probe examples within its
       radius (``functional.feature_groups``);
    3. a pair of groups is *antiphase* when both losses oscillate (their changes flip sign at
       least ``min_flips`` times in the window) and the correlation of their changes is below
       ``-corr_threshold``;
    4. for the ``max_pairs`` most antiphase pairs, the cosine of the two groups' mean-loss
       gradients is computed (exactly, or on a ``sketch_dim`` random projection); the pair is
       *flagged* when it is below ``-cos_threshold``.

    Logged every evaluation: ``opposing/probe_loss``; every search: ``opposing/num_groups``,
    ``opposing/num_flagged``, and for the reported pair (the first flagged one, else the most
    antiphase one) ``opposing/pair_corr``, ``opposing/group_loss_a``, ``opposing/group_loss_b``
    and, when its gradients were compared, ``opposing/pair_grad_cos``. On the first search that
    flags a pair, then at most once per ``report_every`` evaluations, a table of the flagged
    pairs with pictures of their examples (or raw rows) and a figure of the two groups' losses
    over the window go to W&B, or to files under the logger's directory (``lightning_dyn.loggers``).

    ``detections`` keeps the last ``max_detections`` flagged pairs with the dataset indices of
    their examples; it and the ring buffer are saved in checkpoints, so a resumed run continues
    exactly. Under DDP each rank evaluates every ``world_size``-th probe example and the losses
    (and features) are all-gathered; group gradients are all-reduced, so every rank takes the
    same decisions and the same collectives. Per-token targets (logits ``(N, T, K)``, targets
    ``(N, T)``) give each example the mean loss of its positions. When the probe losses are not
    finite (a diverged run) the search is skipped, a warning names the step, and training goes on.

    Args:
        probe: the probe examples: training-set indices, a ``DataLoader`` (read once), or
            ``None`` for ``probe_size`` training examples drawn at random with ``seed``. Use a
            loader without augmentation: augmentation makes loss changes noise.
        probe_size: probe size when ``probe`` is ``None``.
        every_n_steps: evaluate the probe every this many optimizer steps.
        k: number of rising and of falling examples that seed the groups.
        window: evaluations kept in the ring buffer (at least 3).
        group_fn: ``(indices, batch) -> (n,) int group ids`` for the probe examples ``indices``
            (dataset indices) held in ``batch``; ``None`` clusters features.
        feature_module: name of the submodule whose output is clustered; ``None`` uses the
            input of the last ``nn.Linear`` (the penultimate features of a classifier).
        n_clusters: k-means clusters when grouping by features.
        split_by_target: split each cluster by target (integer class targets only).
        grad_check_every: search every this many evaluations.
        sketch_dim: compare gradients through a random projection to this many numbers (memory
            ``O(sketch_dim)`` per group instead of a copy of the model per group).
        corr_threshold: ``τ_ρ`` in (0, 1]: antiphase when the correlation is below ``-τ_ρ``.
        cos_threshold: ``τ_c`` in [0, 1]: opposing when the gradient cosine is below ``-τ_c``.
        min_flips: sign flips of each group's loss change required in the window.
        min_group_size: smaller groups are ignored.
        max_pairs: antiphase pairs whose gradients are compared per search.
        loss_fn: ``loss_fn(outputs, targets, reduction="none")`` giving per-example losses;
            ``None`` is cross-entropy (per position for per-token targets, then averaged).
        logits_fn: ``(pl_module, batch) -> (outputs, targets)``; default ``pl_module(batch[0])``
            and ``batch[1]``.
        batch_size: examples per forward pass on the probe.
        max_media_examples: examples pictured per group in the table.
        report_every: evaluations between two reports (table and figure); a report costs about
            0.1-0.3 s, so one per step would dominate the cost of the detector.
        max_detections: detections kept in ``detections`` (and in checkpoints).
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
        loss_fn: LossFn | None = None,
        logits_fn: LogitsFn | None = None,
        batch_size: int = 1024,
        max_media_examples: int = 8,
        report_every: int = 100,
        max_detections: int = 64,
        seed: int = 0,
    ) -> None:
        for name, value, minimum in (
            ("probe_size", probe_size, 1),
            ("every_n_steps", every_n_steps, 1),
            ("k", k, 1),
            ("window", window, 3),
            ("n_clusters", n_clusters, 1),
            ("grad_check_every", grad_check_every, 1),
            ("min_flips", min_flips, 0),
            ("min_group_size", min_group_size, 1),
            ("max_pairs", max_pairs, 1),
            ("batch_size", batch_size, 1),
            ("max_media_examples", max_media_examples, 0),
            ("report_every", report_every, 1),
            ("max_detections", max_detections, 1),
        ):
            check_positive_int(name, value, minimum)
        if sketch_dim is not None:
            check_positive_int("sketch_dim", sketch_dim)
        check_fraction("corr_threshold", corr_threshold, open_low=True)
        check_fraction("cos_threshold", cos_threshold)
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
        check_callable("loss_fn", loss_fn, '(outputs, targets, reduction="none") -> losses')
        check_callable("logits_fn", logits_fn, LOGITS_FN_SIGNATURE)
        check_bool("split_by_target", split_by_target)
        if group_fn is not None and feature_module is not None:
            raise ValueError("give group_fn or feature_module, not both: groups come from one.")
        self.probe_spec, self.probe_size, self.every_n_steps = probe, probe_size, every_n_steps
        self.k, self.window, self.group_fn = k, window, group_fn
        self.feature_module, self.n_clusters = feature_module, n_clusters
        self.split_by_target, self.grad_check_every = split_by_target, grad_check_every
        self.sketch_dim, self.corr_threshold = sketch_dim, corr_threshold
        self.cos_threshold, self.min_flips = cos_threshold, min_flips
        self.min_group_size, self.max_pairs = min_group_size, max_pairs
        self.loss_fn, self.logits_fn = loss_fn, logits_fn or ForwardFirstInput(type(self).__name__)
        self.batch_size, self.max_media_examples = batch_size, max_media_examples
        self.report_every = report_every
        self.seed = seed
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
        self._first_detection: tuple[int, str, str] | None = None
        self._guard = DivergenceGuard(type(self).__name__)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, window=self.window)

    # --- lifecycle ------------------------------------------------------------------------------

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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Drawn here, where the training loader exists: a probe that cannot work fails at once.
        self._probe = self._draw_probe(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._capture.detach()

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
            losses.append(mean_per_example(self._per_example_loss(outputs, target)))
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

    def _per_example_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        if self.loss_fn is None:
            return per_example_cross_entropy(outputs, target, type(self).__name__)
        return self.loss_fn(outputs, target, reduction="none")

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

    # --- pair search ----------------------------------------------------------------------------

    def _search(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, features: Tensor | None
    ) -> dict[str, float]:
        window, steps = self._ordered()
        # The losses were gathered: every rank sees the same window and takes the same branch.
        if not self._guard.all_finite(trainer, [window], synced=True):
            return {"num_groups": 0.0, "num_flagged": 0.0}
        rising, falling = top_loss_changes(window[-2], window[-1], min(self.k, window.shape[1]))
        members = torch.cat([rising, falling]).unique()
        groups, names = self._groups(members, features)
        metrics = {"num_groups": float(len(names)), "num_flagged": 0.0}
        if len(names) < 2:
            return metrics
        series = group_loss_series(window, groups, len(names))
        corr = antiphase_matrix(series)
        oscillating = oscillation_count(series) >= self.min_flips
        upper = torch.ones_like(corr, dtype=torch.bool).triu(1)
        pairs = sorted((float(corr[a, b]), int(a), int(b)) for a, b in upper.nonzero().tolist())
        report = pairs[0]
        candidates = [
            p
            for p in pairs
            if p[0] < -self.corr_threshold and oscillating[p[1]] and oscillating[p[2]]
        ][: self.max_pairs]
        gradients: dict[int, Tensor] = {}
        flagged, report_cos = [], None
        for pair_corr, a, b in candidates:
            for g in (a, b):
                if g not in gradients:
                    gradients[g] = self._group_gradient(trainer, pl_module, groups == g)
            cos = float(group_gradient_cosine(gradients[a], gradients[b]))
            if report_cos is None:
                report, report_cos = (pair_corr, a, b), cos
            if cos < -self.cos_threshold:
                if not flagged:
                    report, report_cos = (pair_corr, a, b), cos
                flagged.append((pair_corr, cos, a, b))
        metrics.update(num_flagged=float(len(flagged)), pair_corr=report[0])
        metrics.update(group_loss_a=float(series[-1, report[1]]))
        metrics.update(group_loss_b=float(series[-1, report[2]]))
        if report_cos is not None:
            metrics["pair_grad_cos"] = report_cos
        records = [self._record(int(steps[-1]), names, groups, steps, series, *f) for f in flagged]
        self.detections.extend(records)
        self._num_detections += len(records)
        if records and self._first_detection is None:
            self._first_detection = (records[0]["step"], *records[0]["groups"])
        due = self._last_media is None or self._evaluations - self._last_media >= self.report_every
        if records and due:
            self._last_media = self._evaluations
            log_detection(trainer, self._probe, records, self.max_media_examples)
        return metrics

    def _groups(self, members: Tensor, features: Tensor | None) -> tuple[Tensor, list[str]]:
        """Group id of every probe example (-1: none) and a name per group."""
        if self._user_groups is not None:
            user = self._user_groups
            chosen = user[members].unique()
            groups = torch.full_like(user, -1)
            for gid, value in enumerate(chosen.tolist()):
                groups[user == value] = gid
            names = [f"group {value}" for value in chosen.tolist()]
        else:
            targets = self._targets if self.split_by_target else None
            groups, keys = feature_groups(features, members, self.n_clusters, targets, self.seed)
            names = [f"cluster {c}" + ("" if t is None else f", target {t}") for c, t in keys]
        # Drop groups too small to average over, and renumber the rest densely.
        sizes = torch.bincount(groups[groups >= 0], minlength=len(names))
        kept = (sizes >= self.min_group_size).nonzero().flatten().tolist()
        remap = torch.full((len(names) + 1,), -1, dtype=torch.long)
        remap[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
        return remap[groups], [names[g] for g in kept]

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
                loss = mean_per_example(self._per_example_loss(outputs, target)).sum()
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

    def _record(
        self,
        step: int,
        names: list[str],
        groups: Tensor,
        steps: Tensor,
        series: Tensor,
        pair_corr: float,
        cos: float,
        a: int,
        b: int,
    ) -> dict[str, Any]:
        indices = self._probe.indices
        return {
            "step": step,
            "groups": (names[a], names[b]),
            "pair_corr": pair_corr,
            "pair_grad_cos": cos,
            "positions": ((groups == a).nonzero().flatten(), (groups == b).nonzero().flatten()),
            "indices": (indices[groups == a].tolist(), indices[groups == b].tolist()),
            "steps": steps.tolist(),
            "losses": (series[:, a].tolist(), series[:, b].tolist()),
        }

    # --- results and checkpoints ----------------------------------------------------------------

    def flagged_indices(self) -> list[int]:
        """Sorted dataset indices of every example in a kept detection."""
        found = {i for record in self.detections for part in record["indices"] for i in part}
        return sorted(found)

    def summarize(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Lines for the end-of-run summary of the ``lightning-dyn`` CLI."""
        if self._first_detection is None:
            return {"opposing pairs flagged": "none"}
        step, group_a, group_b = self._first_detection
        return {
            "opposing pairs flagged": f"{self._num_detections}, first at step {step}: "
            f"{group_a} vs {group_b}",
            f"examples in the last {len(self.detections)} pairs": len(self.flagged_indices()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": None if self._losses is None else self._losses.clone(),
            "steps": self._steps.clone(),
            "evaluations": self._evaluations,
            "last_step": self._last_step,
            "last_media": self._last_media,
            "detections": list(self.detections),
            "num_detections": self._num_detections,
            "first_detection": self._first_detection,
            **self._guard.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._losses = state_dict["losses"]
        self._steps = state_dict["steps"]
        self._evaluations = state_dict["evaluations"]
        self._last_step = state_dict["last_step"]
        self._last_media = state_dict["last_media"]
        self.detections.clear()
        self.detections.extend(state_dict["detections"])
        self._num_detections = state_dict["num_detections"]
        self._first_detection = state_dict["first_detection"]
        self._guard.load_state_dict(state_dict)
