"""The tiny language-model recipe: an offline corpus, shifted windows, a causal model, resume."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from harness import assert_same, checkpoint_every, parameters_of, quiet_trainer

from lightning_dyn.recipes import CharCorpusDataModule, TinyGPT, TinyLMModule, stdlib_corpus

TINY_DATA = {
    "max_chars": 50_000,
    "context": 16,
    "batch_size": 8,
    "steps_per_epoch": 4,
    "val_batches": 2,
}
TINY_MODULE = {"context": 16, "d_model": 32, "n_layer": 1, "n_head": 2}


@pytest.fixture(scope="module")
def data() -> CharCorpusDataModule:
    dm = CharCorpusDataModule(**TINY_DATA)
    dm.setup()
    return dm


def test_corpus_is_the_stdlib_source_and_the_same_every_call() -> None:
    text = stdlib_corpus(50_000)
    assert text == stdlib_corpus(50_000) and len(text) == 50_000
    # `__future__.py` comes first in code-point order of the relative paths.
    first = Path(sysconfig.get_paths()["stdlib"], "__future__.py").read_text(encoding="utf-8")
    assert text.startswith(first)
    assert stdlib_corpus(2_000_000)[:50_000] == text


def test_corpus_order_exclusions_and_decoding(tmp_path: Path, monkeypatch) -> None:
    files = {
        "b.py": "b\r\n",  # newlines are translated
        "a/z.py": "# -*- coding: latin-1 -*-\nz = 'é'\n".encode("latin-1"),
        "a-b.py": "ab\n",  # '-' < '/' in code-point order: before a/z.py
        "readme.txt": "not python\n",
        "_sysconfigdata__linux.py": "build = 1\n",
        "site-packages/pkg.py": "third party\n",
        "a/test/test_z.py": "tests\n",
        "idlelib/idle.py": "idle\n",
        "config-3.11-x86_64-linux-gnu/python-config.py": "config\n",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, newline="")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    expected = "ab\n# -*- coding: latin-1 -*-\nz = 'é'\nb\n"
    assert stdlib_corpus(len(expected)) == expected
    assert stdlib_corpus(5) == expected[:5]
    with pytest.raises(ValueError, match=rf"max_chars=99 exceeds the {len(expected)} characters"):
        stdlib_corpus(99)


def test_vocabulary_round_trips(data: CharCorpusDataModule) -> None:
    text = stdlib_corpus(TINY_DATA["max_chars"])
    assert data.chars == sorted(set(text)) and data.vocab_size == len(set(text))
    sample = text[1000:1500]
    ids = data.encode(sample)
    assert ids.dtype == torch.long and ids.shape == (500,)
    assert data.decode(ids) == sample and data.decode(ids.tolist()) == sample
    with pytest.raises(ValueError, match="character '€'"):
        data.encode("x = '€'")
    with pytest.raises(RuntimeError, match="call setup"):
        _ = CharCorpusDataModule().vocab_size


def test_split_is_by_position(data: CharCorpusDataModule) -> None:
    text, context = stdlib_corpus(TINY_DATA["max_chars"]), TINY_DATA["context"]
    n_train = len(text) - int(0.1 * len(text))
    train_x, train_y = data.train_set.tensors
    assert len(data.train_set) == n_train - context  # every window inside the training part
    assert data.decode(train_x[0]) == text[:context]
    assert data.decode(train_y[-1]) == text[n_train - context : n_train]
    val_x, val_y = data.val_set.tensors
    count = TINY_DATA["val_batches"] * TINY_DATA["batch_size"]
    assert len(data.val_set) == count
    assert data.decode(val_x[0]) == text[n_train : n_train + context]
    assert data.decode(val_y[-1]) == text[-context:]
    # Evenly spaced over the validation part, first and last window included.
    last = len(text) - n_train - context - 1
    for i, row in enumerate(val_x):
        start = n_train + i * last // (count - 1)
        assert data.decode(row) == text[start : start + context]


def test_targets_are_the_inputs_shifted_by_one(data: CharCorpusDataModule) -> None:
    text = stdlib_corpus(TINY_DATA["max_chars"])
    for x, y in (next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))):
        assert x.shape == y.shape == (TINY_DATA["batch_size"], TINY_DATA["context"])
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y, strict=True):
            assert data.decode(row_x) + data.decode(row_y[-1:]) in text


def _epoch_batches(data: CharCorpusDataModule, epoch: int, world: int = 1, rank: int = 0):
    data.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    batches = [x for x, _ in loader]
    data.trainer = None
    return torch.stack(batches)


def test_batches_are_fixed_by_seed_and_epoch(data: CharCorpusDataModule) -> None:
    epoch0 = _epoch_batches(data, 0)
    assert epoch0.shape == (TINY_DATA["steps_per_epoch"], 8, 16)
    again = CharCorpusDataModule(**TINY_DATA)
    again.setup()
    assert torch.equal(_epoch_batches(again, 0), epoch0)
    assert not torch.equal(_epoch_batches(data, 1), epoch0)
    other_seed = CharCorpusDataModule(**TINY_DATA, seed=1)
    other_seed.setup()
    assert not torch.equal(_epoch_batches(other_seed, 0), epoch0)
    # Under DDP every rank takes its own share of one draw, with steps_per_epoch batches each.
    rank0, rank1 = (
        _epoch_batches(data, 0, world=2, rank=0),
        _epoch_batches(data, 0, world=2, rank=1),
    )
    assert rank0.shape == rank1.shape == epoch0.shape
    assert not torch.equal(rank0, rank1)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=20, context=12, d_model=16, n_layer=2, n_head=2).eval()
    idx = torch.randint(20, (3, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % 20
    before, after = model(idx), model(changed)
    assert before.shape == (3, 12, 20)
    torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=1e-6)
    assert (after[:, 7:] - before[:, 7:]).abs().amax(dim=-1).min() > 1e-4  # later logits see it


def _expected_count(V: int, T: int, d: int, L: int, bias: bool, tie: bool) -> int:
    per_block = 12 * d * d + 2 * d + (11 * d if bias else 0)  # attention 4d², MLP 8d², 2 LNs
    final_ln = d + (d if bias else 0)
    return V * d + T * d + L * per_block + final_ln + (0 if tie else V * d)


@pytest.mark.parametrize(
    ("V", "T", "d", "L", "heads", "bias", "tie"),
    [
        (96, 64, 64, 2, 4, False, True),  # the recipe's default: 109K
        (96, 64, 64, 2, 4, True, False),
        (96, 128, 128, 4, 4, False, True),
        (96, 256, 384, 6, 6, False, True),  # nanoGPT's shakespeare-char size
    ],
)
def test_parameter_count(V, T, d, L, heads, bias, tie) -> None:
    model = TinyGPT(V, T, d_model=d, n_layer=L, n_head=heads, bias=bias, tie_weights=tie)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_count(V, T, d, L, bias, tie)
    assert (model.head.weight is model.token_embedding.weight) == tie
    if d == 384:
        assert 10e6 < count < 11e6
    if (d, L) == (64, 2) and not bias:
        assert count == 108_864


def _fit(tmp_path: Path, steps: int, seed: int = 0, ckpt_path=None, **kwargs) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    module = TinyLMModule(**TINY_MODULE)
    trainer = quiet_trainer(tmp_path, steps, **kwargs)
    trainer.fit(module, datamodule=CharCorpusDataModule(**TINY_DATA), ckpt_path=ckpt_path)
    return trainer


def test_training_lowers_the_loss_and_logs_bits_per_character(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, 24)
    module = trainer.lightning_module
    assert module.hparams.vocab_size == trainer.datamodule.vocab_size  # taken from the data
    losses = [m["train/loss"] for _, m in trainer.logger.records if "train/loss" in m]
    assert len(losses) == 24
    assert losses[0] > math.log(module.hparams.vocab_size) - 0.3  # starts near uniform
    assert sum(losses[-4:]) / 4 < losses[0] - 1.0
    validations = [m for _, m in trainer.logger.records if "val/loss" in m]
    assert len(validations) == 24 // TINY_DATA["steps_per_epoch"]  # once per epoch
    assert validations[-1]["val/loss"] < validations[0]["val/loss"]
    for m in validations:
        assert m["val/bpc"] == pytest.approx(m["val/loss"] / math.log(2))


def test_resume_gives_the_same_numbers_and_checkpoints_load(tmp_path: Path) -> None:
    n = TINY_DATA["steps_per_epoch"]  # checkpoints at an epoch boundary
    saver = checkpoint_every(n, tmp_path / "ckpt")
    straight = _fit(tmp_path, 2 * n, callbacks=[saver])
    expected = parameters_of(straight.lightning_module)
    expected_metrics = {k: float(v) for k, v in straight.callback_metrics.items()}

    # Another seed: the model must come from the checkpoint, not from its initialisation.
    saver = checkpoint_every(n, tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt" / f"step={n}.ckpt"
    resumed = _fit(tmp_path, 2 * n, seed=1, callbacks=[saver], ckpt_path=ckpt)
    assert resumed.global_step == 2 * n
    assert_same(parameters_of(resumed.lightning_module), expected, "params")
    assert_same({k: float(v) for k, v in resumed.callback_metrics.items()}, expected_metrics)

    loaded = TinyLMModule.load_from_checkpoint(tmp_path / "ckpt" / f"step={2 * n}.ckpt")
    assert loaded.hparams.vocab_size == resumed.datamodule.vocab_size
    assert_same(parameters_of(loaded), expected, "loaded params")


def test_the_optimizer_is_a_function_of_the_module() -> None:
    seen = []

    def factory(target):
        seen.append(target)
        return torch.optim.SGD(target.parameters(), lr=0.1)

    module = TinyLMModule(vocab_size=10, **TINY_MODULE, optimizer=factory)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD) and seen == [module]
    default = TinyLMModule(vocab_size=10, **TINY_MODULE).configure_optimizers()
    assert isinstance(default, torch.optim.AdamW) and default.defaults["weight_decay"] == 0.1


def test_bad_arguments_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"max_chars must be an integer >= 1; got 0"):
        stdlib_corpus(0)
    with pytest.raises(ValueError, match=r"max_chars=1000000000 exceeds the \d+ characters"):
        stdlib_corpus(10**9)
    with pytest.raises(ValueError, match=r"context must be an integer >= 1; got 0"):
        CharCorpusDataModule(context=0)
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\); got 1.0"):
        CharCorpusDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match=r"max_chars=500 with val_fraction=0.1.*context=64"):
        CharCorpusDataModule(max_chars=500).setup()
    with pytest.raises(ValueError, match=r"n_head=3 must divide d_model=32"):
        TinyLMModule(d_model=32, n_head=3)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\); got 1.0"):
        TinyLMModule(dropout=1.0)
    with pytest.raises(ValueError, match=r"input length 17 exceeds the model's context=16"):
        TinyGPT(10, 16)(torch.zeros(1, 17, dtype=torch.long))
    dm = CharCorpusDataModule(**TINY_DATA)
    with pytest.raises(ValueError, match=r"vocab_size=5\) does not match the data module's"):
        quiet_trainer(tmp_path, 1).fit(TinyLMModule(vocab_size=5, **TINY_MODULE), datamodule=dm)
    dm.setup()
    with pytest.raises(
        ValueError, match=r"vocab_size=None\) takes vocab_size from the trainer's data module"
    ):
        quiet_trainer(tmp_path, 1).fit(TinyLMModule(**TINY_MODULE), dm.train_dataloader())
