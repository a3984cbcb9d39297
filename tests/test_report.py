"""``lightning-dyn report RUN_DIR``: the run read back, the HTML, and what a browser shows of it."""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_workflow import _command

from lightning_dyn._report import panel_of, write_report
from lightning_dyn._run_records import read_run_dir

# The probe's flags: without the background-networking ones Chromium keeps trying the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def _write_csv_run(run_dir: Path) -> None:
    version = run_dir / "csv" / "version_0"
    version.mkdir(parents=True)
    rows = [
        {"step": 0, "epoch": 0, "train/acc": 0.1, "test/acc": "", "train/loss": 2.0},
        {"step": 0, "epoch": 0, "train/acc": "", "test/acc": 0.05, "train/loss": ""},
        {"step": 1, "epoch": 1, "train/acc": 0.5, "test/acc": "", "train/loss": "nan"},
        {"step": 1, "epoch": 1, "train/acc": "", "test/acc": 0.25, "train/loss": ""},
    ]
    with (version / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (version / "media" / "table").mkdir(parents=True)
    (version / "media" / "curves").mkdir(parents=True)
    for step, colour in ((1, "red"), (2, "blue")):
        Image.new("RGB", (8, 4), colour).save(version / "media" / "curves" / f"step_{step:08d}.png")
    (version / "media" / "table" / "step_1.csv").write_text("a,b\n1,2\n")
    (run_dir / "summary.json").write_text('{"steps": 2, "test/acc": 0.25}')


def test_the_run_is_read_back_from_its_csv_metrics(tmp_path: Path) -> None:
    _write_csv_run(tmp_path)
    record = read_run_dir(tmp_path)
    assert record.curves["train/acc"] == ([0.0, 1.0], [0.1, 0.5])
    assert record.curves["test/acc"] == ([0.0, 1.0], [0.05, 0.25])
    assert np.isnan(record.curves["train/loss"][1][0 + 1]) and "epoch" not in record.curves
    assert record.summary == {"steps": 2, "test/acc": 0.25}
    assert record.tables == [("table/step_1.csv", ["a", "b"], [["1", "2"]])]
    assert [(step, p.name) for step, p in record.images["curves"]] == [
        (1, "step_00000001.png"),
        (2, "step_00000002.png"),
    ]


def test_train_and_test_of_a_metric_share_a_panel() -> None:
    assert panel_of("train/acc") == panel_of("test/acc") == "acc"
    assert panel_of("perp_grad/cos/layer1") == panel_of("perp_grad/cos/layer2") == "perp_grad/cos"
    assert panel_of("lr-AdamW") == "lr-AdamW"


def test_a_folder_without_a_run_is_refused_with_what_was_looked_for(tmp_path: Path) -> None:
    done = _command("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode != 0
    assert "holds no W&B run" in done.stderr and "csv/version_*/metrics.csv" in done.stderr
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        read_run_dir(tmp_path / "missing")


def _embedded_images(page: str) -> dict[str, np.ndarray]:
    """``alt`` -> RGB pixels of every base64 PNG the page embeds."""
    images = {}
    for alt_first in re.finditer(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', page):
        picture = Image.open(io.BytesIO(base64.b64decode(alt_first[1]))).convert("RGB")
        images[alt_first[2]] = np.asarray(picture, dtype=np.float64)
    return images


def _best_match(screen: np.ndarray, template: np.ndarray) -> float:
    """Smallest mean squared difference of ``template`` over every position in ``screen``
    (grey levels 0-255), by FFT cross-correlation."""
    s, t = screen.mean(axis=2), template.mean(axis=2)
    if t.shape[0] > s.shape[0] or t.shape[1] > s.shape[1]:
        return float("inf")
    shape = (s.shape[0] + t.shape[0], s.shape[1] + t.shape[1])
    cross = np.fft.irfft2(np.fft.rfft2(s, shape) * np.conj(np.fft.rfft2(t, shape)), shape)
    h, w = s.shape[0] - t.shape[0] + 1, s.shape[1] - t.shape[1] + 1
    th, tw = t.shape
    sums = np.pad(s**2, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    s2 = sums[th : th + h, tw : tw + w] - sums[:h, tw : tw + w] - sums[th : th + h, :w]
    s2 = s2 + sums[:h, :w]
    ssd = s2 - 2 * cross[:h, :w] + (t**2).sum()
    return float(ssd.min() / t.size)


def _screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=1200,2000",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)


def test_the_main_jobs_report_shows_its_accuracy_curve_in_chromium(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    steps = ["trainer.max_steps=40", "checkpoint_every_n_steps=null"]
    done = _command(*steps, f"hydra.run.dir={run_dir}", cwd=tmp_path, console=True)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _command("report", str(run_dir), cwd=tmp_path, console=True)
    assert done.returncode == 0, done.stderr[-3000:]
    page = run_dir / "report.html"
    assert f"wrote {page}" in done.stdout

    record = read_run_dir(run_dir)  # from the offline W&B run, the main job's only logger
    assert record.sources[0].startswith("W&B run")
    steps_logged, accuracy = record.curves["test/acc"]
    assert steps_logged[0] == 0 and steps_logged[-1] >= 39 and len(accuracy) >= 40
    assert record.config["optimizer.lr"] == 0.01 and record.summary["steps"] == 40
    # The recipe's MetricCurves figure is a W&B image: a figure, not curves of its width.
    assert len(record.images["curves"]) == 1 and not any("curves" in k for k in record.curves)

    text = page.read_text()
    images = _embedded_images(text)
    assert 'src="file:' not in text and '<img src="data:' in text  # self-contained
    screen = _screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    # The accuracy panel's own pixels are on the screen (exactly: it is drawn at 1:1)...
    assert _best_match(screen, images["acc"]) < 1.0
    # ...and a page without it does not match it: the check can fail.
    without = tmp_path / "without.html"
    without.write_text(text.replace('alt="acc"', 'alt="acc" style="display:none"'))
    hidden = _screenshot(without, tmp_path / "hidden.png", tmp_path / "profile2")
    assert _best_match(hidden, images["acc"]) > 100.0


def test_report_writes_where_it_is_told(tmp_path: Path) -> None:
    _write_csv_run(tmp_path / "run")
    out = write_report(tmp_path / "run", tmp_path / "elsewhere" / "r.html")
    text = out.read_text()
    assert out.is_file() and '<img src="data:image/png;base64,' in text and 'alt="acc"' in text
    assert "<h3>table/step_1.csv</h3>" in text
    # The latest image of a key only: the blue one of step 2.
    assert "step_00000002.png, 1 earlier left out" in text
    assert _embedded_images(text)["curves"][0, 0].tolist() == [0.0, 0.0, 255.0]
