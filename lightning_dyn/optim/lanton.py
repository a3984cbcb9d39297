"""LANTON: noise-adaptive layerwise learning rates on geometry-aware (Muon/Scion-style) updates.

Hao, Gong, Xu, Wang, Liu, "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware
Optimization for Deep Neural Network Training", arXiv 2510.14009. Per layer ℓ and step t:

    B ← β1 B + (1 - β1) G                       momentum (fp32; fp64 for fp64 weights)
    H ← β2 H + (1 - β2) ||G_t - G_{t-1}||_*²    noise estimate in the layer's dual norm (idem)
    X ← X (1 - η wd) - η f_ℓ LMO_ℓ(B)            f_ℓ from H, relative to the layer's noise group

What is reconstructed, not read from the paper (whose Algorithm 1 was not available to us, see
docs/methods/lanton.md): the learning-rate factor
``f_ℓ = (d_min / d_ℓ)^(power / 2)`` with ``d_ℓ = H_ℓ + alpha · max_group H`` (the least noisy
layer of a group keeps the group's learning rate, noisier layers get less; ``alpha`` makes the
rule invariant to the gradient scale), with ``power = 1/2`` by default. ``adaptive=False`` sets
``f_ℓ = 1``: the optimizer is then plain Muon (spectral groups) / Signum (sign groups) / AdamW.

Under FSDP2 (``DTensor`` parameters) the state is sharded like the parameters (``DTensor``s, saved
and restored by distributed checkpointing), elementwise work runs on each rank's rows, and the
whole-matrix steps, the spectral LMO and every dual norm of the noise estimate, run on one owner
rank per matrix (``optim._sharded``): the update is the one of unsharded training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_dyn._checks import (
    check_bool,
    check_choice,
    check_float_dtype,
    check_fraction,
    check_positive_int,
    check_real,
)
from lightning_dyn.functional._dtensor import local
from lightning_dyn.functional._ns_coefficients import (
    NS_COEFFICIENTS,
    NSCoefficients,
    NSPreset,
    resolve_coefficients,
)
from lightning_dyn.functional.lmo import (
    SPECTRAL_SCALES,
    SpectralScale,
    l1_norm,
    sign_lmo,
    spectral_dual_norm,
    spectral_lmo,
)
from lightning_dyn.optim._sharded import ShardedMatrices, is_sharded
from lightning_dyn.optim.param_groups import GROUPING_KEYS, param_groups

LMO = Literal["spectral", "sign", "adamw"]
LMOS: tuple[str, ...] = get_args(LMO)
BOOKKEEPING_KEYS = ("params", "param_names", "name")
"""Group keys besides the hyperparameters; ``LearningRateMonitor`` labels a group by ``name``."""
NOISE_RULE_KEYS = ("adaptive", "noise_alpha", "power", "exact_dual_norm")
"""Keys every param group of one noise group must share: they say how its layers are compared."""


def _state_dtype(p: Tensor) -> torch.dtype:
    """float32, or float64 for float64 parameters: 16-bit statistics would lose small updates."""
    return torch.promote_types(p.dtype, torch.float32)


def _check_hyperparameters(values: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` naming the first out-of-range value; ``where`` prefixes each name."""
    for key in ("lr", "weight_decay", "noise_alpha", "power"):
        check_real(where + key, values[key])
    for key in ("eps", "adam_eps"):
        check_real(where + key, values[key], strictly_positive=True)
    for key in ("momentum", "noise_beta"):
        check_fraction(where + key, values[key], open_high=True)
    for key in ("ns_steps", "noise_every"):
        check_positive_int(where + key, values[key])
    for key in ("nesterov", "adaptive", "exact_dual_norm"):
        check_bool(where + key, values[key])
    check_choice(where + "lmo", values["lmo"], LMOS)
    check_choice(where + "spectral_scale", values["spectral_scale"], SPECTRAL_SCALES)
    betas = values["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}betas must be a pair (beta1, beta2); got {betas!r}.")
    for i, beta in enumerate(betas):
        check_fraction(f"{where}betas[{i}]", beta, open_high=True)
    dtype = values["ns_dtype"]
    check_float_dtype(where + "ns_dtype", dtype, optional=True, hint=" (e.g. torch.bfloat16)")
    try:
        resolve_coefficients(values["ns_coefficients"])
    except (TypeError, ValueError):
        presets = ", ".join(map(repr, NS_COEFFICIENTS))
        raise ValueError(
            f"{where}ns_coefficients must be a preset name ({presets}) or a tuple (a, b, c) of "
            f"3 numbers; got {values['ns_coefficients']!r}."
        ) from None
    if not (values["noise_group"] is None or isinstance(values["noise_group"], str)):
        raise ValueError(
            f"{where}noise_group must be a name (str) or None (the group's lmo); "
            f"got {values['noise_group']!r}."
        )


def _ns_settings(group: Mapping[str, Any]) -> dict[str, Any]:
    """The Newton-Schulz keyword arguments of a group, for its LMO and its noise estimate alike."""
    return {
        "steps": group["ns_steps"],
        "coefficients": group["ns_coefficients"],
        "eps": group["eps"],
        "dtype": group["ns_dtype"],
    }


class LANTON(torch.optim.Optimizer):
    """One optimizer for a whole model; each param group names its LMO.

    Every argument below but ``params`` is also a param-group key, with the argument as its
    default, saved and restored with the groups by ``state_dict()`` (so ``LANTON(model
    .parameters())`` treats every tensor as a spectral matrix; use
    :func:`lightning_dyn.optim.param_groups` to split a real model). Two more keys:

    - ``lmo``: ``"spectral"`` (Newton-Schulz polar factor, hidden matrices), ``"sign"`` (Signum,
      embeddings and heads), ``"adamw"`` (vectors, first conv; no noise adaptation).
    - ``noise_group``: name of the layers whose noise is compared with each other (default: the
      ``lmo``). It may span several param groups; they must then agree on ``adaptive``,
      ``noise_alpha``, ``power`` and ``exact_dual_norm`` (the rule and the norm the layers are
      compared by: a layer cannot be ranked by two rules). The other keys may differ.

    Besides those, only ``params``, ``param_names`` and ``name`` (Lightning's
    ``LearningRateMonitor`` labels groups by it) are accepted: a misspelt key would otherwise
    train silently at the default. Keys and values are checked by the constructor and
    :meth:`add_param_group`.

    The layerwise factor is applied inside :meth:`step` and never written into ``group["lr"]``,
    so LR schedulers and ``LearningRateMonitor`` stay correct; :meth:`effective_lrs` gives the
    learning rate each tensor actually got at the last step. State (momentum, noise, AdamW
    moments) is float32, float64 for float64 parameters, and :meth:`load_state_dict` keeps it
    so; ``step`` makes no host sync (no ``.item()``). A step skipped by a ``GradScaler`` never
    reaches ``step``, so it does not update the noise either.

    Args:
        params: tensors, or param-group dicts with the keys above.
        lr: base learning rate.
        momentum: β1 of the momentum buffer.
        nesterov: use ``G + β1 (B - G)`` (as torch's Muon) instead of ``B`` as the LMO input.
        weight_decay: decoupled weight decay, ``X ← X (1 - lr wd)``.
        adaptive: ``False`` turns the noise adaptation off (plain geometry-aware optimizer).
        noise_beta: β2 of the noise EMA.
        noise_alpha: relative floor of the noise, ``alpha · max_group H``.
        power: exponent of the factor; ``f = (a_ℓ / max a)^power`` with ``a = d^(-1/2)``.
        exact_dual_norm: nuclear norm by ``svdvals`` (exact, costly) instead of the cheap
            Newton-Schulz estimate ``<D, NS(D)>`` (with the group's Newton-Schulz settings).
        noise_every: measure the noise every this many steps (with ``G_{t-1}`` the gradient of
            the step before), each measurement one EMA update. The estimate costs about one more
            Newton-Schulz per matrix, i.e. doubles a Muon step; 4 brings it to ~1.25x.
        ns_steps, ns_coefficients, ns_dtype, eps: Newton-Schulz settings of spectral groups.
        spectral_scale: ``"rms_to_rms"`` (sqrt(d_out/d_in), Scion/LANTON), ``"muon"``
            (sqrt(max(1, d_out/d_in)), torch.optim.Muon's default) or ``"none"``.
        betas, adam_eps: AdamW settings of ``"adamw"`` groups.
        lmo: the LMO of groups that do not name one.

    Raises:
        ValueError: for an unknown group key or a value out of range (naming both), a vector
            in a spectral group, or param groups of one noise group with different rules.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        adaptive: bool = True,
        noise_beta: float = 0.99,
        noise_alpha: float = 0.01,
        power: float = 0.5,
        exact_dual_norm: bool = False,
        noise_every: int = 1,
        ns_steps: int = 5,
        ns_coefficients: NSPreset | NSCoefficients = "muon",
        ns_dtype: torch.dtype | None = torch.bfloat16,
        eps: float = 1e-7,
        spectral_scale: SpectralScale = "rms_to_rms",
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        lmo: LMO = "spectral",
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "adaptive": adaptive,
            "noise_beta": noise_beta,
            "noise_alpha": noise_alpha,
            "power": power,
            "exact_dual_norm": exact_dual_norm,
            "noise_every": noise_every,
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "ns_dtype": ns_dtype,
            "eps": eps,
            "spectral_scale": spectral_scale,
            "betas": betas,
            "adam_eps": adam_eps,
            "lmo": lmo,
            "noise_group": None,
        }
        _check_hyperparameters(defaults)  # named as arguments, before any group repeats them
        super().__init__(params, defaults)

    @classmethod
    def from_module(cls, module: torch.nn.Module, **kwargs: Any) -> LANTON:
        """LANTON over :func:`~lightning_dyn.optim.param_groups` of ``module``: the grouping
        arguments (``sign_lr``, ``adamw_lr``, ``weight_decay``, ``embeddings_as``, ...) go there,
        the rest to LANTON, ``lr`` to both (``optimizer=lanton`` and ``optimizer=muon``)."""
        grouping = {k: kwargs.pop(k) for k in GROUPING_KEYS if k in kwargs}
        lr = {"lr": kwargs["lr"]} if "lr" in kwargs else {}
        return cls(param_groups(module, **lr, **grouping), **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (the constructor adds each of its own through here), checked strictly.

        A group that fails a check is taken out again: it must not be stepped unchecked.
        """
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            allowed = (*BOOKKEEPING_KEYS, *self.defaults)
            unknown = sorted(set(group) - set(allowed))
            if unknown:
                raise ValueError(
                    f"param group {index} has unknown keys {unknown}; allowed: "
                    + ", ".join(map(repr, allowed))
                    + "."
                )
            _check_hyperparameters(group, f"param group {index}: ")
            if group["noise_group"] is None:
                group["noise_group"] = group["lmo"]
            if group["lmo"] == "spectral":
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(
                            f"a 'spectral' param group holds a tensor of shape "
                            f"{tuple(p.shape)}; spectral LMOs need matrices (or conv kernels): "
                            "put vectors in an 'adamw' group (see "
                            "lightning_dyn.optim.param_groups)."
                        )
            self._noise_groups()
        except ValueError:
            self.param_groups.pop()
            raise
        # A Python counter in the group (saved with it): no host sync to read a step tensor.
        group["steps_taken"] = 0

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with ``ns_dtype`` saved by name (``"bfloat16"``): distributed
        checkpointing (FSDP2) cannot store a ``torch.dtype``."""
        state = super().state_dict()
        for group in state["param_groups"]:
            if isinstance(group.get("ns_dtype"), torch.dtype):
                group["ns_dtype"] = str(group["ns_dtype"]).removeprefix("torch.")
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load groups and state as torch does, but keep the state in LANTON's dtype.

        torch casts floating state to each parameter's dtype: float32 statistics of a 16-bit
        model would make a lossy round trip through bfloat16 (a resumed run would drift from an
        uninterrupted one), and a float64 model's would no longer match the float64 gradients
        of the next step. So every tensor is restored again from ``state_dict`` itself, in the
        dtype this optimizer keeps for the parameter: the saved dtype when the parameter's
        precision is unchanged. Groups saved before the hyperparameters were group keys get
        this optimizer's, which is what they trained with.
        """
        built = [dict(group) for group in self.param_groups]
        groups = [
            {**g, "ns_dtype": getattr(torch, g["ns_dtype"])}
            if isinstance(g.get("ns_dtype"), str)
            else g
            for g in state_dict["param_groups"]
        ]
        super().load_state_dict({**state_dict, "param_groups": groups})
        for group, before in zip(self.param_groups, built, strict=True):
            for key, value in before.items():
                group.setdefault(key, value)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for param_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(param_id, {}).items():
                # AdamW's step count stays where it was, on the host, as torch keeps "step".
                device = value.device if key == "step" else p.device
                self.state[p][key] = value.to(dtype=_state_dtype(p), device=device, copy=True)

    # -- the three phases of a step -------------------------------------------------------------

    def _noise_groups(self) -> dict[str, list[dict[str, Any]]]:
        """The spectral and sign param groups by noise group, checked to have one rule each."""
        members: dict[str, list[dict[str, Any]]] = {}
        for group in self.param_groups:
            if group["lmo"] != "adamw":
                members.setdefault(group["noise_group"], []).append(group)
        for name, groups in members.items():
            for key in NOISE_RULE_KEYS:
                values = list(dict.fromkeys(g[key] for g in groups))
                if len(values) > 1:
                    found = " and ".join(f"{key}={v!r}" for v in values)
                    raise ValueError(
                        f"the param groups of noise group {name!r} have {found}: layers compared "
                        f"with each other need one {key}; give them the same value or different "
                        "noise_group names."
                    )
        return members

    def _sharding(self) -> ShardedMatrices | None:
        """Owners of the sharded parameters (made once per set of parameters), or ``None``."""
        params = [p for g in self.param_groups for p in g["params"] if is_sharded(p)]
        if not params:
            return None
        key = tuple(id(p) for p in params)
        cached = getattr(self, "_sharded", None)
        if cached is None or cached[0] != key:
            self._sharded = (key, ShardedMatrices(params))
        return self._sharded[1]

    @staticmethod
    def _new_state(p: Tensor, value: Tensor) -> Tensor:
        """A state tensor for ``p`` from its local ``value``: a ``DTensor`` laid out as ``p`` when
        ``p`` is sharded, so that distributed checkpoints save every rank's rows."""
        if isinstance(p, DTensor):
            return DTensor.from_local(
                value, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
            )
        return value

    @staticmethod
    def _norm_of(group: dict[str, Any], d: Tensor) -> Tensor:
        if group["lmo"] == "sign":
            return l1_norm(d)
        return spectral_dual_norm(d, exact=group["exact_dual_norm"], **_ns_settings(group))

    def _dual_norm(
        self, group: dict[str, Any], p: Tensor, d: Tensor, sharding: ShardedMatrices | None
    ) -> Tensor:
        """The layer's dual norm of ``d`` (this rank's rows of it when ``p`` is sharded)."""
        if not is_sharded(p):
            return self._norm_of(group, d)
        full = sharding.gather(p, d)
        value = self._norm_of(group, full) if full is not None else None
        return sharding.share(p, value, like=d.new_zeros(()))

    def _update_noise(self, sharding: ShardedMatrices | None) -> None:
        """H ← β2 H + (1 - β2) ||G_t - G_{t-1}||², on the raw gradient, before any momentum."""
        for group in self.param_groups:
            if group["lmo"] == "adamw" or not group["adaptive"]:
                continue
            taken, every, beta = group["steps_taken"], group["noise_every"], group["noise_beta"]
            measure, keep = taken % every == 0, (taken + 1) % every == 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "noise" not in state:
                    state["noise"] = torch.zeros((), dtype=_state_dtype(p), device=p.device)
                grad = local(p.grad).detach().to(_state_dtype(p))
                if measure and "prev_grad" in state:
                    norm = self._dual_norm(group, p, grad - local(state["prev_grad"]), sharding)
                    state["noise"].mul_(beta).add_((1 - beta) * norm**2)
                if keep:
                    if "prev_grad" in state:
                        local(state["prev_grad"]).copy_(grad)
                    else:
                        state["prev_grad"] = self._new_state(p, grad.clone())

    def _layer_factors(self) -> None:
        """``state["lr_factor"]`` of every tensor, relative within its noise group."""
        for groups in self._noise_groups().values():
            rule = groups[0]  # one rule per noise group, checked above
            params = [p for g in groups for p in g["params"] if p.grad is not None]
            if not params:
                continue
            if not rule["adaptive"]:
                for p in params:
                    self.state[p]["lr_factor"] = torch.ones(
                        (), dtype=_state_dtype(p), device=p.device
                    )
                continue
            noise = torch.stack([self.state[p]["noise"] for p in params])
            d = noise + rule["noise_alpha"] * noise.max() + 1e-30
            factors = (d.min() / d) ** (rule["power"] / 2)  # (a_ℓ / max a)^power, a = d^-1/2
            for p, factor in zip(params, factors.unbind(), strict=True):
                self.state[p]["lr_factor"] = factor.to(_state_dtype(p))

    def _geometric_update(self, group: dict[str, Any], sharding: ShardedMatrices | None) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            grad = local(p.grad).detach().to(_state_dtype(p))
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = self._new_state(p, torch.zeros_like(grad))
            buf = local(state["momentum_buffer"])
            buf.lerp_(grad, 1 - group["momentum"])
            update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
            if group["lmo"] == "sign":
                direction = sign_lmo(update)  # elementwise: the local rows are enough
            else:
                direction = self._spectral(group, p, update, sharding)
            lr = group["lr"] * state["lr_factor"]
            weight = local(p)
            weight.mul_(1 - group["lr"] * group["weight_decay"])
            weight.sub_(direction.to(weight.dtype) * lr)

    @staticmethod
    def _spectral(
        group: dict[str, Any], p: Tensor, update: Tensor, sharding: ShardedMatrices | None
    ) -> Tensor:
        """The spectral LMO of the whole matrix (this rank's rows of it when ``p`` is sharded)."""
        settings = {"scale": group["spectral_scale"], **_ns_settings(group)}
        if not is_sharded(p):
            return spectral_lmo(update, **settings)
        full = sharding.gather(p, update)
        direction = spectral_lmo(full, **settings) if full is not None else None
        return sharding.scatter(p, direction, like=update)

    def _adamw_update(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            grad = local(p.grad).detach().to(_state_dtype(p))
            if "exp_avg" not in state:
                state["exp_avg"] = self._new_state(p, torch.zeros_like(grad))
                state["exp_avg_sq"] = self._new_state(p, torch.zeros_like(grad))
                state["step"] = torch.zeros((), dtype=grad.dtype)  # on the host, as torch's
            state["step"] += 1
            step = state["step"]
            exp_avg, exp_avg_sq = local(state["exp_avg"]), local(state["exp_avg_sq"])
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["adam_eps"])
            weight = local(p)
            weight.mul_(1 - group["lr"] * group["weight_decay"])
            weight.sub_((exp_avg / (1 - beta1**step) / denom).to(weight.dtype) * group["lr"])

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sharding = self._sharding()
        self._update_noise(sharding)
        self._layer_factors()
        for group in self.param_groups:
            if group["lmo"] == "adamw":
                self._adamw_update(group)
            else:
                self._geometric_update(group, sharding)
            group["steps_taken"] += 1
        return loss

    def _named_params(self) -> Iterable[tuple[str, dict[str, Any], Tensor]]:
        for i, group in enumerate(self.param_groups):
            names = group.get("param_names") or [
                f"group{i}.{j}" for j in range(len(group["params"]))
            ]
            for name, p in zip(names, group["params"], strict=True):
                yield name, group, p

    def effective_lrs(self) -> dict[str, Tensor]:
        """Learning rate each tensor got at the last step (``lr · f_ℓ``), keyed by name.

        Names come from ``param_names`` in the param groups (torch's named-parameter groups, as
        :func:`lightning_dyn.optim.param_groups` builds them), else ``group<i>.<j>``.
        """
        lrs = {}
        for name, group, p in self._named_params():
            factor = self.state[p].get("lr_factor") if p in self.state else None
            if group["lmo"] == "adamw" or factor is None:
                lrs[name] = torch.as_tensor(float(group["lr"]))
            else:
                lrs[name] = group["lr"] * factor
        return lrs

    def noise_estimates(self) -> dict[str, Tensor]:
        """The noise EMA ``H`` of every adapted tensor, keyed like :meth:`effective_lrs`."""
        return {
            name: self.state[p]["noise"]
            for name, _, p in self._named_params()
            if "noise" in self.state.get(p, {})
        }
