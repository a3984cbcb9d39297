"""Hessian eigenvalues and trace: this project's Lanczos and Hutchinson against PyHessian.

Same model, data and point for both: a 64-32-32-10 tanh MLP with biases (3466 parameters) on
scikit-learn's handwritten digits, one fixed batch (all 1797 images, pixels / 16), mean
cross-entropy, trained ``--train-steps`` full-batch Adam steps (lr 1e-2) from its seeded
initialisation so that the Hessian has its outlier eigenvalues (the loss is printed). The
reference is the exact spectrum: the dense Hessian of a float64 copy of the model
(``torch.func.jacrev(torch.func.grad(loss), chunk_size=128)``, the same double backward as
``torch.autograd.functional.hessian(vectorize=True)``, which took 54 s and several GB here,
against about 20 s in chunks) and ``torch.linalg.eigvalsh``; both libraries work on the float32
model. Eigenvalues are compared with their signs: the error is ``|λ̂ - λ| / |λ|`` for the signed
``λ̂`` and ``λ``.

Each of ``--repeats`` repeats uses seed ``--seed + r`` for both libraries (PyHessian draws its
random vectors from torch's global generator, seeded with ``torch.manual_seed``; ours from that
seed) and runs:

1. top-1 eigenvalue at tolerance 1e-3: ``hessian_eigenvalues(op, k=1, tol=1e-3)`` (Lanczos,
   stops on the Ritz pair's residual) vs PyHessian's
   ``hessian(model, F.cross_entropy, data=(x, y), cuda=False).eigenvalues(maxIter=100,
   tol=1e-3, top_n=1)`` (power iteration, stops when the Rayleigh quotient changes by less than
   ``tol`` relative between two iterations);
2. top-5 at tolerance 1e-3: ``k=5`` vs ``top_n=5`` (power iteration with deflation, up to
   ``maxIter`` products per eigenvalue); PyHessian's values sorted in descending order before
   comparing with the exact five largest; the error is the largest of the five;
3. trace: PyHessian's ``trace(maxIter=100, tol=1e-3)`` (Hutchinson, stopped when the running mean
   changes by less than ``tol`` relative) against ``hessian_trace`` with a fixed budget ``N``, the
   median of PyHessian's numbers of products over the repeats' seeds (an untimed first pass:
   PyHessian's trace is a deterministic function of the seed), Hutchinson and Hutch++, and
   Hutchinson with its default 100. With the same seed both libraries draw the *same* Rademacher
   probes (torch's CPU Mersenne Twister, one bit per entry, parameters in order; checked), so
   the Hutchinson rows differ only in when they stop. PyHessian reports no standard error; the
   one shown for it is computed here from its samples (sample std / sqrt(n)).
4. The signed-eigenvalue defect, on an indefinite quadratic ``L(w) = ½ wᵀ A w`` with
   ``A = Q diag(-5, 3, 48 values in [0, 1]) Qᵀ`` (50 parameters, ``Q`` random orthogonal): the
   "top" eigenvalue of PyHessian is the largest in magnitude, -5; Lanczos gives 3.

Within each task the order of the methods is reversed every other repeat; one untimed call of
each precedes the repeats.
Times include building the operator: PyHessian's constructor (a forward and a backward with
``create_graph=True``) and ``HessianOperator``'s. Figures are medians over repeats; the time
ratio is the ratio of the medians. The two libraries pay differently per product: PyHessian keeps
one gradient graph alive and differentiates it again for every product, ``HessianOperator``
keeps no graph between products by default and recomputes the forward pass and the gradient for
each one, so it costs more per product (the table gives ms per product) and less in products;
with ``keep_graph=True`` (the ``SharpnessMonitor`` default) it keeps the graph as PyHessian does.

Then the side effects, once, on the digits model put in train mode with every ``.grad`` set:
which mode it is left in, and whether the gradients survive.

How products were counted: PyHessian's single-batch ``eigenvalues`` and ``trace`` call
``hessian_vector_product`` (one ``torch.autograd.grad`` each) through the name that
``pyhessian.hessian`` imported from ``pyhessian.utils``; this script replaces that name by a
counting wrapper. Ours: ``EigenResult.num_hvps`` / ``TraceResult.num_hvps``.

PyHessian used: the PyPI wheel 0.1 (``pip install --no-deps pyhessian``: it needs only torch and
numpy). Its ``eigenvalues`` and ``trace`` run on torch 2.x; only ``density`` calls the removed
``torch.eig``. The repository (amirgholami/PyHessian, HEAD de8cf23) differs from the wheel in
``density`` and in ``trace``'s stopping rule only by ``abs(trace)`` in the denominator, the same
for a positive trace as here.

On a machine whose cores are shared, pass ``--threads 1`` (see ``stablemax_overhead.py``). The
default run took 40 s on the project's 2-core machine, 20 s of it for the exact spectrum.

    python benchmarks/hessian_vs_pyhessian.py --repeats 30 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dyn.functional import HessianOperator, hessian_eigenvalues, hessian_trace

TOL = 1e-3
WIDTH = 32
TOP_K = 5
EXACT_CHUNK = 128  # rows of the dense Hessian per vmapped double backward

try:
    import pyhessian
except ImportError as error:
    raise SystemExit(
        "This benchmark compares with PyHessian: pip install --no-deps pyhessian"
    ) from error


class _CountedHVP:
    """Stands in for ``pyhessian.hessian.hessian_vector_product`` and counts the calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.count = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.fn(*args, **kwargs)


# The package's ``hessian`` attribute is the class; the module holding it is in sys.modules.
_pyhessian_module = sys.modules["pyhessian.hessian"]
PYHESSIAN_HVP = _CountedHVP(_pyhessian_module.hessian_vector_product)
_pyhessian_module.hessian_vector_product = PYHESSIAN_HVP
# PyHessian's constructor calls loss.backward(create_graph=True), which warns about the
# parameter <-> gradient reference cycle every time.
warnings.filterwarnings("ignore", message=".*create_graph=True will create a reference cycle.*")


@dataclass
class Run:
    """One call of one library: its answer, products and wall time."""

    values: list[float]
    hvps: int
    seconds: float
    stderr: float = float("nan")
    converged: bool | None = None


@dataclass
class Row:
    """The runs of one method on one task, over the repeats."""

    task: str
    method: str
    runs: list[Run] = field(default_factory=list)


# --- problems -----------------------------------------------------------------------------------


def digits_problem(train_steps: int, seed: int) -> tuple[nn.Module, Tensor, Tensor, float]:
    """The MLP after ``train_steps`` Adam steps on all digits, the batch and its final loss."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SystemExit("The digits come with scikit-learn: pip install scikit-learn") from error
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    return model, x, y, loss


def exact_spectrum(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, float]:
    """Eigenvalues (ascending, float64) of the dense Hessian of a float64 copy, and seconds."""
    start = time.perf_counter()
    reference = copy.deepcopy(model).double()
    names = [name for name, _ in reference.named_parameters()]
    shapes = [p.shape for p in reference.parameters()]
    sizes = [p.numel() for p in reference.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    inputs = x.double()

    def loss(flat: Tensor) -> Tensor:
        pieces = [t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)]
        params = dict(zip(names, pieces, strict=True))
        return F.cross_entropy(torch.func.functional_call(reference, params, (inputs,)), y)

    hessian = torch.func.jacrev(torch.func.grad(loss), chunk_size=EXACT_CHUNK)(theta)
    eigenvalues = torch.linalg.eigvalsh(0.5 * (hessian + hessian.T))
    return eigenvalues, time.perf_counter() - start


class _Quadratic(nn.Module):
    """Returns its parameter vector; with ``criterion(w, A) = ½ wᵀ A w`` the Hessian is ``A``."""

    def __init__(self, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, generator=generator))

    def forward(self, _: Tensor) -> Tensor:
        return self.w


def _quadratic_loss(w: Tensor, a: Tensor) -> Tensor:
    return 0.5 * w @ a @ w


def indefinite_problem(seed: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """``_Quadratic`` of dim 50, a dummy input, ``A`` and its spectrum (descending)."""
    generator = torch.Generator().manual_seed(seed)
    spectrum = torch.cat([torch.tensor([3.0, -5.0]), torch.linspace(1.0, 0.0, 48)])
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=generator, dtype=torch.float64))
    a = (q * spectrum.double()) @ q.T
    a = (0.5 * (a + a.T)).float()
    return _Quadratic(50, generator), torch.zeros(1), a, spectrum.sort(descending=True).values


# --- the two libraries --------------------------------------------------------------------------


def _cross_entropy(forward: Callable[..., Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(forward(batch[0]), batch[1])


def _quadratic(forward: Callable[..., Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    return _quadratic_loss(forward(batch[0]), batch[1])


def _pyhessian(model: nn.Module, criterion: Callable[..., Tensor], x: Tensor, y: Tensor) -> Any:
    model.zero_grad(set_to_none=True)  # its constructor's backward adds to existing .grad
    return pyhessian.hessian(model, criterion, data=(x, y), cuda=False)


def pyhessian_eigenvalues(
    model: nn.Module,
    criterion: Callable[..., Tensor],
    x: Tensor,
    y: Tensor,
    k: int,
    max_iter: int,
    seed: int,
) -> Run:
    torch.manual_seed(seed)
    before = PYHESSIAN_HVP.count
    start = time.perf_counter()
    values, _ = _pyhessian(model, criterion, x, y).eigenvalues(maxIter=max_iter, tol=TOL, top_n=k)
    seconds = time.perf_counter() - start
    return Run(sorted(values, reverse=True), PYHESSIAN_HVP.count - before, seconds)


def our_eigenvalues(
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    x: Tensor,
    y: Tensor,
    k: int,
    seed: int,
    which: str = "largest",
    keep_graph: bool = False,
) -> Run:
    start = time.perf_counter()
    operator = HessianOperator(model, loss_fn, [(x, y)], keep_graph=keep_graph)
    result = hessian_eigenvalues(operator, k=k, which=which, tol=TOL, seed=seed)
    seconds = time.perf_counter() - start
    return Run(result.values.tolist(), result.num_hvps, seconds, converged=result.converged)


def pyhessian_trace(model: nn.Module, x: Tensor, y: Tensor, max_iter: int, seed: int) -> Run:
    torch.manual_seed(seed)
    before = PYHESSIAN_HVP.count
    start = time.perf_counter()
    samples = _pyhessian(model, F.cross_entropy, x, y).trace(maxIter=max_iter, tol=TOL)
    seconds = time.perf_counter() - start
    n = len(samples)
    stderr = statistics.stdev(samples) / math.sqrt(n) if n > 1 else float("nan")
    return Run([statistics.fmean(samples)], PYHESSIAN_HVP.count - before, seconds, stderr)


def our_trace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    samples: int,
    method: str,
    seed: int,
    keep_graph: bool = False,
) -> Run:
    start = time.perf_counter()
    operator = HessianOperator(model, _cross_entropy, [(x, y)], keep_graph=keep_graph)
    result = hessian_trace(operator, samples=samples, method=method, seed=seed)
    seconds = time.perf_counter() - start
    return Run([result.mean], result.num_hvps, seconds, result.stderr)


def side_effects(model: nn.Module, measure: Callable[[], Any]) -> tuple[bool, str]:
    """Run ``measure`` on ``model`` in train mode with every ``.grad`` set; mode and grads after."""
    model.train()
    marks = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, mark in zip(model.parameters(), marks, strict=True):
        p.grad = mark.clone()
    measure()
    grads = [p.grad for p in model.parameters()]
    if all(g is None for g in grads):
        state = "wiped (None)"
    elif all(g is not None and torch.equal(g, m) for g, m in zip(grads, marks, strict=True)):
        state = "unchanged"
    else:
        state = "changed"
    training = model.training
    model.zero_grad(set_to_none=True)
    model.eval()
    return training, state


# --- report -------------------------------------------------------------------------------------


def _eigen_error(run: Run, exact: list[float]) -> float:
    return max(abs(v - e) / abs(e) for v, e in zip(run.values, exact, strict=True))


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"


def _hvps(row: Row) -> str:
    counts = [r.hvps for r in row.runs]
    low, high = min(counts), max(counts)
    middle = statistics.median(counts)
    return f"{middle:g}" if low == high else f"{middle:g} ({low}-{high})"


def _ms(row: Row) -> float:
    return 1e3 * statistics.median(r.seconds for r in row.runs)


def _ms_per_hvp(row: Row) -> float:
    return 1e3 * statistics.median(r.seconds / r.hvps for r in row.runs)


def eigen_lines(rows: list[Row], exact: list[float], baseline: Row) -> list[str]:
    lines = []
    for row in rows:
        errors = [_eigen_error(r, exact) for r in row.runs]
        ratio = _ms(row) / _ms(baseline)
        values = [statistics.median(r.values[i] for r in row.runs) for i in range(len(exact))]
        converged = [r.converged for r in row.runs if r.converged is not None]
        note = f"converged {sum(converged)}/{len(converged)}" if converged else ""
        lines.append(
            f"| {row.task} | {row.method} | {_hvps(row)} | {_ms(row):.1f} | "
            f"{_ms_per_hvp(row):.2f} | {'1' if row is baseline else f'**{ratio:.3f}**'} | "
            f"{', '.join(_fmt(v) for v in values)} | {_fmt(statistics.median(errors), 2)} / "
            f"{_fmt(max(errors), 2)} | {note} |"
        )
    return lines


def trace_lines(rows: list[Row], exact: float, baseline: Row) -> list[str]:
    lines = []
    for row in rows:
        errors = [abs(r.values[0] - exact) / abs(exact) for r in row.runs]
        covered = sum(abs(r.values[0] - exact) <= 2 * r.stderr for r in row.runs)
        ratio = _ms(row) / _ms(baseline)
        estimate = statistics.median(r.values[0] for r in row.runs)
        mean = statistics.fmean(r.values[0] for r in row.runs)
        stderr = statistics.median(r.stderr for r in row.runs)
        lines.append(
            f"| trace | {row.method} | {_hvps(row)} | {_ms(row):.1f} | {_ms_per_hvp(row):.2f} | "
            f"{'1' if row is baseline else f'{ratio:.3f}'} | {_fmt(estimate)} ± {_fmt(stderr, 2)} "
            f"| {_fmt(statistics.median(errors), 2)} / {_fmt(max(errors), 2)} | "
            f"mean over repeats {_fmt(mean)}; within 2 stderr {covered}/{len(row.runs)} |"
        )
    return lines


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--seed", type=int, default=0, help="model, and base of the repeats'")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument(
        "--pyhessian-max-iter", type=int, default=100, help="PyHessian's maxIter (its default)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    max_iter = args.pyhessian_max_iter

    model, x, y, loss = digits_problem(args.train_steps, args.seed)
    model.eval()
    dim = sum(p.numel() for p in model.parameters())
    spectrum, exact_seconds = exact_spectrum(model, x, y)
    top = spectrum.flip(0)[:TOP_K].tolist()
    exact_trace = float(spectrum.sum())
    print(
        f"digits MLP: {dim} parameters, {len(y)} examples, loss {loss:.4f} after "
        f"{args.train_steps} Adam steps; exact spectrum in {exact_seconds:.1f} s: top "
        f"{', '.join(f'{v:.5g}' for v in top)}, smallest {float(spectrum[0]):.4g}, trace "
        f"{exact_trace:.5g}",
        flush=True,
    )

    seeds = [args.seed + r for r in range(args.repeats)]
    # PyHessian's trace is a deterministic function of the seed: a first, untimed pass over the
    # seeds gives the fixed budget of ours, the median of its numbers of products.
    counts = [pyhessian_trace(model, x, y, max_iter, s).hvps for s in seeds]
    budget = math.ceil(statistics.median(counts))
    rows = {
        "ph1": Row("top-1", f"PyHessian `eigenvalues(top_n=1, tol=1e-3, maxIter={max_iter})`"),
        "our1": Row("top-1", "`hessian_eigenvalues(k=1, tol=1e-3)`"),
        "our1k": Row("top-1", "same, `HessianOperator(keep_graph=True)`"),
        "ph5": Row(f"top-{TOP_K}", f"PyHessian `eigenvalues(top_n={TOP_K}, ...)`"),
        "our5": Row(f"top-{TOP_K}", f"`hessian_eigenvalues(k={TOP_K}, tol=1e-3)`"),
        "our5k": Row(f"top-{TOP_K}", "same, `keep_graph=True`"),
        "pht": Row("trace", f"PyHessian `trace(tol=1e-3, maxIter={max_iter})`"),
        "hutch": Row("trace", f"`hessian_trace(samples={max(2, budget)})`"),
        "hutchk": Row("trace", "same, `keep_graph=True`"),
        "hutchpp": Row("trace", f'`hessian_trace(samples={max(4, budget)}, method="hutch++")`'),
        "hutch100": Row("trace", "`hessian_trace(samples=100)`"),
    }
    tasks: dict[str, Callable[[int], Run]] = {
        "ph1": lambda s: pyhessian_eigenvalues(model, F.cross_entropy, x, y, 1, max_iter, s),
        "our1": lambda s: our_eigenvalues(model, _cross_entropy, x, y, 1, s),
        "our1k": lambda s: our_eigenvalues(model, _cross_entropy, x, y, 1, s, keep_graph=True),
        "ph5": lambda s: pyhessian_eigenvalues(model, F.cross_entropy, x, y, TOP_K, max_iter, s),
        "our5": lambda s: our_eigenvalues(model, _cross_entropy, x, y, TOP_K, s),
        "our5k": lambda s: our_eigenvalues(model, _cross_entropy, x, y, TOP_K, s, keep_graph=True),
        "pht": lambda s: pyhessian_trace(model, x, y, max_iter, s),
        "hutch": lambda s: our_trace(model, x, y, max(2, budget), "hutchinson", s),
        "hutchk": lambda s: our_trace(model, x, y, max(2, budget), "hutchinson", s, True),
        "hutchpp": lambda s: our_trace(model, x, y, max(4, budget), "hutch++", s),
        "hutch100": lambda s: our_trace(model, x, y, 100, "hutchinson", s),
    }
    groups = (
        ("ph1", "our1", "our1k"),
        ("ph5", "our5", "our5k"),
        ("pht", "hutch", "hutchk", "hutchpp", "hutch100"),
    )
    for fn in tasks.values():  # warm-up, untimed
        fn(args.seed)
    start = time.perf_counter()
    for repeat, seed in enumerate(seeds):
        for keys in groups:
            for key in keys if repeat % 2 == 0 else keys[::-1]:
                rows[key].runs.append(tasks[key](seed))
        if (repeat + 1) % 10 == 0 or repeat + 1 == args.repeats:
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    repeats_seconds = time.perf_counter() - start

    # 4. The signed-eigenvalue defect.
    quad, dummy, a, quad_spectrum = indefinite_problem(args.seed)
    quad_ph = pyhessian_eigenvalues(quad, _quadratic_loss, dummy, a, 1, max_iter, args.seed)
    quad_ours = our_eigenvalues(quad, _quadratic, dummy, a, 1, args.seed)
    quad_both = our_eigenvalues(quad, _quadratic, dummy, a, 1, args.seed, which="both")

    # Side effects on a model in the middle of training.
    ph_mode, ph_grads = side_effects(
        model, lambda: pyhessian_eigenvalues(model, F.cross_entropy, x, y, 1, 100, 0)
    )
    our_mode, our_grads = side_effects(
        model, lambda: our_eigenvalues(model, _cross_entropy, x, y, 1, 0)
    )

    command = shlex.join(["python", "benchmarks/hessian_vs_pyhessian.py", *sys.argv[1:]])
    print(f"\n```bash\n{command}\n```\n")
    threads = torch.get_num_threads()
    print(
        f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({threads} torch thread{'s' * (threads != 1)}), torch {torch.__version__}, python "
        f"{platform.python_version()}, PyHessian {importlib.metadata.version('pyhessian')} "
        f"(PyPI wheel); digits MLP 64-{WIDTH}-{WIDTH}-10 tanh, {dim} parameters, batch of "
        f"{len(y)}, loss {loss:.4f} after {args.train_steps} Adam steps; median of "
        f"{args.repeats} repeat{'s' * (args.repeats != 1)} ({repeats_seconds:.0f} s); exact "
        f"float64 spectrum in {exact_seconds:.1f} s: top {TOP_K} "
        f"{', '.join(f'{v:.5g}' for v in top)}, smallest {float(spectrum[0]):.4g}, trace "
        f"{exact_trace:.5g}:\n"
    )
    print(
        "| task | method | HVPs (median (min-max)) | ms | ms / HVP | time ratio to PyHessian | "
        "value (median) | rel. error vs exact (median / worst) | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    lines = eigen_lines([rows["ph1"], rows["our1"], rows["our1k"]], top[:1], rows["ph1"])
    lines += eigen_lines([rows["ph5"], rows["our5"], rows["our5k"]], top, rows["ph5"])
    lines += trace_lines(
        [rows[k] for k in ("pht", "hutch", "hutchk", "hutchpp", "hutch100")],
        exact_trace,
        rows["pht"],
    )
    print("\n".join(lines))
    print(
        "\nFor the top-5 rows, the error is the largest of the five; the PyHessian trace's "
        "± is computed here from its samples (PyHessian reports none)."
    )

    print(
        f"\nSigned eigenvalues, `L(w) = ½ wᵀ A w` with spectrum {{-5, 3, 48 values in [0, 1]}} "
        f"(50 parameters; largest algebraic {float(quad_spectrum[0]):g}, smallest "
        f"{float(quad_spectrum[-1]):g}):\n"
    )
    print("| method | HVPs | value(s) |")
    print("|---|---|---|")
    print(
        f"| PyHessian `eigenvalues(top_n=1, tol=1e-3)` | {quad_ph.hvps} | {quad_ph.values[0]:.5g} |"
    )
    print(f"| `hessian_eigenvalues(k=1)` | {quad_ours.hvps} | {quad_ours.values[0]:.5g} |")
    print(
        f'| `hessian_eigenvalues(k=1, which="both")` | {quad_both.hvps} | largest '
        f"{quad_both.values[0]:.5g}, smallest {quad_both.values[1]:.5g} |"
    )
    print(
        f"\nSide effects, on the digits model in train mode with every `.grad` set: PyHessian "
        f"left it in {'train' if ph_mode else 'eval'} mode, `.grad` {ph_grads}; "
        f"`HessianOperator` + `hessian_eigenvalues` left it in {'train' if our_mode else 'eval'} "
        f"mode, `.grad` {our_grads}."
    )


if __name__ == "__main__":
    main()
