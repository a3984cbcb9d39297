"""Neural-collapse metrics (NC1-NC4) of the penultimate features, streamed over a dataloader."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_dyn._checks import check_bool, check_callable, check_choice, check_positive_int
from lightning_dyn.callbacks._adapters import (
    LOGITS_FN_SIGNATURE,
    ForwardFirstInput,
    LogitsFn,
    classes_last,
)
from lightning_dyn.callbacks._divergence import DivergenceGuard, nan_metrics
from lightning_dyn.callbacks._features import FeatureCapture, last_linear_name
from lightning_dyn.callbacks._measurement import probe_pass, training_batch, whole
from lightning_dyn.callbacks._probe import batch_length, unpadded_length
from lightning_dyn.functional.losses import CLASSIFICATION_LOSSES, ClassificationLoss
from lightning_dyn.functional.neural_collapse import (
    NC_TARGETS,
    Target,
    class_means,
    global_mean,
    nc4,
    neural_collapse_metrics,
    target_gram,
)
from lightning_dyn.loggers import log_figure
from lightning_dyn.metrics import NC4Mismatches, NeuralCollapseStatistics

Dataloader = Literal["train", "val"]
NC4Mode = Literal["second_pass", "lagged", "off"]
DATALOADERS: tuple[str, ...] = get_args(Dataloader)
NC4_MODES: tuple[str, ...] = get_args(NC4Mode)
GEOMETRIES = ("auto", *NC_TARGETS)
NC_METRICS = ("nc1", "nc1_trace_ratio", "cdnv", "nc3", "nc4", "gram_distance")


class NeuralCollapseMonitor(pl.Callback):
    """Logs NC1-NC4 (Papyan, Han & Donoho, arXiv 2008.08186) every ``every_n_epochs`` epochs.

    After the last batch of a training epoch, in eval mode without gradients (every submodule's
    own mode restored after), the callback runs the model over ``dataloader`` (``"train"``: the
    training loader, each DDP rank its own shard; ``"val"``: the first validation loader),
    batches converted as Lightning converts training batches (precision included), and each
    example counted once (the padding ``DistributedSampler`` adds to uneven shards is left out).
    It captures the penultimate features
    with a forward hook registered at ``on_fit_start`` (the input of ``classifier``, or the
    output of ``feature_module``), and accumulates per-class sufficient statistics in a
    ``NeuralCollapseStatistics`` metric: memory ``O(K·D + D²)``, whatever the dataset size,
    synchronised across ranks by torchmetrics. Logged under ``nc/`` (``functional``
    ``neural_collapse_metrics``): ``nc1`` ((1/K) Tr(Σ_W Σ_B^+)), ``nc1_trace_ratio``, ``cdnv``,
    ``equinorm_means``, ``equinorm_classifier``, ``equiangularity``, ``max_angle``,
    ``gram_distance`` (class means vs the target geometry), ``nc3`` and ``nc4``, plus a figure
    ``nc/gram`` of the class means' Gram matrix next to the target's.

    Per-token targets (language models, taggers: features ``(N, T, D)``, logits ``(N, T, K)`` or
    ``(N*T, K)``, targets ``(N, T)``) count every position as one example, leaving out targets of
    -100. When the features are not finite (a diverged run) the metrics are logged as NaN with a
    warning that names the step, and training goes on.

    NC4 compares the classifier with the nearest class mean, so it needs the means first; its
    counts are an ``NC4Mismatches`` metric built on those means:
    ``nc4="second_pass"`` runs the loader a second time (exact, twice the cost),
    ``"lagged"`` uses the previous measurement's means in the same pass (no extra pass; the
    first measurement has no NC4), ``"off"`` skips it.

    Args:
        feature_module: name of the submodule whose output are the features; ``None`` uses the
            input of ``classifier``.
        classifier: name of the final linear layer; ``None`` uses the last ``nn.Linear``.
        dataloader: ``"train"`` or ``"val"``.
        every_n_epochs: measure after every this many training epochs.
        max_batches: read at most this many batches per pass (``None``: all).
        geometry: target of ``gram_distance``: ``"etf"`` (simplex ETF of the centred means),
            ``"orthogonal"`` (uncentred means, bias-free square loss, balanced),
            ``"imbalanced"`` (Dang et al.'s frame for bias-free square loss with unequal class
            sizes) or ``"auto"``: ``etf`` if the classifier has a bias or ``loss`` is
            not the square loss, else ``orthogonal`` for balanced and ``imbalanced`` for unequal
            class counts.
        nc4: ``"second_pass"``, ``"lagged"`` or ``"off"``.
        loss: the training loss, a name of :data:`~lightning_dyn.functional.CLASSIFICATION_LOSSES`
            (``"softmax"``, ``"stablemax"`` or ``"square"``; only read by ``"auto"``).
        logits_fn: ``(pl_module, batch) -> (logits, targets)``; default ``pl_module(batch[0])``.
        figure: log the Gram figure.
    """

    def __init__(
        self,
        feature_module: str | None = None,
        classifier: str | None = None,
        dataloader: Dataloader = "train",
        every_n_epochs: int = 1,
        max_batches: int | None = None,
        geometry: Literal["auto"] | Target = "auto",
        nc4: NC4Mode = "second_pass",
        loss: ClassificationLoss = "softmax",
        logits_fn: LogitsFn | None = None,
        figure: bool = True,
    ) -> None:
        check_choice("dataloader", dataloader, DATALOADERS)
        check_positive_int("every_n_epochs", every_n_epochs)
        if max_batches is not None:
            check_positive_int("max_batches", max_batches)
        check_choice("geometry", geometry, GEOMETRIES)
        check_choice("nc4", nc4, NC4_MODES)
        check_choice("loss", loss, CLASSIFICATION_LOSSES)
        check_callable("logits_fn", logits_fn, LOGITS_FN_SIGNATURE)
        check_bool("figure", figure)
        self.feature_module, self.classifier = feature_module, classifier
        self.dataloader, self.every_n_epochs = dataloader, every_n_epochs
        self.max_batches, self.geometry, self.nc4, self.loss = max_batches, geometry, nc4, loss
        self.logits_fn, self.figure = logits_fn or ForwardFirstInput(type(self).__name__), figure
        self._capture = FeatureCapture()
        self._head: nn.Linear | None = None
        self._previous_means: Tensor | None = None  # for nc4="lagged"
        self._previous_global: Tensor | None = None  # the shift of the next accumulation
        self._measurements = 0
        self._guard = DivergenceGuard(type(self).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dataloader=self.dataloader, nc4=self.nc4)

    # --- lifecycle ------------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        name = self.classifier or last_linear_name(pl_module)
        modules = dict(pl_module.named_modules())
        head = modules.get(name) if name is not None else None
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"classifier={self.classifier!r} must name an nn.Linear of "
                f"{type(pl_module).__name__} (got {type(head).__name__}); the default is the "
                "last nn.Linear, and this module has none."
            )
        self._head = head
        self._guard.start_fit()
        if self.feature_module is None:
            self._capture.attach(pl_module, name, of_input=True)
        else:
            self._capture.attach(pl_module, self.feature_module, of_input=False)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._capture.detach()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The epoch's last batch rather than on_train_epoch_end: a checkpoint taken at that
        # batch (ModelCheckpoint runs after every other callback) then holds this measurement,
        # and a run resumed from it does not skip the epoch's measurement.
        if batch_idx + 1 == trainer.num_training_batches:
            self._maybe_measure(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A loader of unknown length (an iterable dataset) has no known last batch.
        if math.isinf(trainer.num_training_batches):
            self._maybe_measure(trainer, pl_module)

    def _maybe_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        try:
            with probe_pass(pl_module):
                metrics, stats = self._measure(trainer, pl_module)
        finally:
            self._capture.capturing = False
        self._measurements += 1
        for key, value in metrics.items():
            pl_module.log(f"nc/{key}", value, on_step=False, on_epoch=True)
        if self.figure and stats is not None:
            log_figure(trainer, "nc/gram", _gram_figure(stats, self._target(stats), trainer))

    # --- measurement ----------------------------------------------------------------------------

    def _loader(self, trainer: pl.Trainer) -> Any:
        if self.dataloader == "train":
            return trainer.train_dataloader
        loaders = trainer.val_dataloaders
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise ValueError("dataloader='val' needs a validation dataloader; the fit has none.")
        return loaders

    def _batches(self, trainer: pl.Trainer) -> Any:
        """``(batch, n)``: each batch, converted, and how many of its first examples count."""
        loader = self._loader(trainer)
        remaining = unpadded_length(loader)  # None: no padding to leave out
        for index, batch in enumerate(loader):
            if self.max_batches is not None and index >= self.max_batches:
                return
            size = batch_length(batch)
            if remaining is None:
                yield training_batch(trainer, batch), size
                continue
            # A rank whose real examples are used up still runs its padded batches, counting
            # none of them: every rank makes the same forward passes (FSDP all-gathers weights in
            # each) and has statistics for the reduction.
            yield training_batch(trainer, batch), max(0, min(size, remaining))
            remaining -= size

    def _features(
        self, pl_module: pl.LightningModule, batch: Any, count: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(M, D)`` features, ``(M, K)`` logits and ``(M,)`` targets of the first ``count``
        examples of ``batch``: one row per example, or per classified position."""
        self._capture.capturing = True
        logits, targets = self.logits_fn(pl_module, batch)
        self._capture.capturing = False
        features = self._capture.take_rows()
        owner = type(self).__name__
        logits = classes_last(logits, targets, owner)
        if targets.ndim <= 1:
            features = features.reshape(features.shape[0], -1)
        elif tuple(features.shape[:-1]) != tuple(targets.shape):
            raise ValueError(
                f"{owner}: features of shape {tuple(features.shape)} do not match targets of "
                f"shape {tuple(targets.shape)}: per-token targets need one feature row per "
                "target position, (N, T, D) with (N, T). Pass feature_module= naming the module "
                "whose output these are, or logits_fn= to return other targets."
            )
        features, logits, targets = features[:count], logits[:count], targets[:count]
        keep = targets.reshape(-1) != -100
        return (
            features.reshape(-1, features.shape[-1])[keep],
            logits.reshape(-1, logits.shape[-1])[keep],
            targets.reshape(-1)[keep],
        )

    @torch.no_grad()
    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[dict[str, float], Any]:
        head = self._head
        lagged = self.nc4 == "lagged" and self._previous_means is not None
        metric: NeuralCollapseStatistics | None = None
        agreement: NC4Mismatches | None = None  # lagged: counted against the previous means
        for batch, count in self._batches(trainer):
            features, logits, targets = self._features(pl_module, batch, count)
            if metric is None:
                k, d = head.out_features, features.shape[1]
                shift = self._previous_shift(d)
                metric = NeuralCollapseStatistics(k, d, shift=shift).to(features.device)
                if lagged:
                    agreement = NC4Mismatches(self._previous_means).to(features.device)
            metric.update(features, targets)
            if agreement is not None:
                agreement.update(features, logits)
        if metric is None:
            raise ValueError(f"the {self.dataloader} dataloader yielded no batch to measure.")
        stats = metric.unpack(metric.compute())
        # Every rank computes (synchronises) both metrics before any branch.
        counts = agreement.compute() if agreement is not None else None
        # compute() synchronised the ranks: every rank takes the same branch here.
        # The head's weights are the same on every rank too.
        weight, bias = whole(head.weight), whole(head.bias)  # FSDP2 shards gathered
        checked = [stats.sums, stats.second_moment, weight, bias]
        if not self._guard.all_finite(trainer, checked, synced=True):
            return nan_metrics(NC_METRICS), None
        means = class_means(stats)
        if self.nc4 == "second_pass":
            # NC4 needs the means of the whole pass above: a second metric, built on them.
            agreement = NC4Mismatches(means).to(means.device)
            for batch, count in self._batches(trainer):
                features, logits, _ = self._features(pl_module, batch, count)
                agreement.update(features, logits)
            counts = agreement.compute()
        metrics = neural_collapse_metrics(stats, weight, bias, target=self._target(stats))
        if counts is not None:
            metrics["nc4"] = nc4(*counts)
        self._previous_means = means.detach().cpu()
        self._previous_global = global_mean(stats).detach().cpu()
        return metrics, stats

    def _previous_shift(self, dim: int) -> Tensor | None:
        previous = self._previous_global
        return previous if previous is not None and previous.numel() == dim else None

    def _target(self, stats: Any) -> str:
        if self.geometry != "auto":
            return self.geometry
        if self._head.bias is not None or self.loss != "square":
            return "etf"
        balanced = bool((stats.counts == stats.counts[0]).all())
        return "orthogonal" if balanced else "imbalanced"

    # --- checkpoints ----------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "measurements": self._measurements,
            "previous_means": self._previous_means,
            "previous_global": self._previous_global,
            **self._guard.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._measurements = state_dict["measurements"]
        self._previous_means = state_dict["previous_means"]
        self._previous_global = state_dict["previous_global"]
        self._guard.load_state_dict(state_dict)


def _gram_figure(stats: Any, target: str, trainer: pl.Trainer) -> Any:
    """The class means' normalised Gram matrix next to the target's."""
    import matplotlib.pyplot as plt

    means = class_means(stats)
    vectors = means - global_mean(stats) if target == "etf" else means
    gram = vectors @ vectors.T
    gram = gram / gram.norm()
    reference = target_gram(target, stats.counts, num_classes=stats.num_classes)
    figure, axes = plt.subplots(1, 2, figsize=(7, 3.2), dpi=100)
    limit = float(max(gram.abs().max(), reference.abs().max()))
    for ax, matrix, title in ((axes[0], gram, "class means"), (axes[1], reference, target)):
        image = ax.imshow(matrix.cpu().numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{title} (step {trainer.global_step})" if ax is axes[0] else title)
        ax.set_xlabel("class")
    figure.colorbar(image, ax=axes.tolist(), shrink=0.8)
    return figure
