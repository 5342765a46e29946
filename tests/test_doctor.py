"""``python -m mammo_anogan.doctor``: the machine, the presets that fit, offline weights, datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_factory import make_prepared_dataset

from mammo_anogan import doctor
from mammo_anogan.data.splits import ensure_splits, read_split_record
from mammo_anogan.training.devices import Hardware

GPU_80 = [{"index": i, "name": "test GPU", "memory_gib": 80.0, "capability": "9.0"} for i in range(2)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctor_data")
    split = make_prepared_dataset(root / "prepared" / "toy_cc_32", 6, 2, resolution=32)
    ensure_splits(split)
    make_prepared_dataset(root / "prepared" / "unsplit_cc_32", 2, 1, resolution=32)
    return root


def test_report_on_a_cpu_machine(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    cfg = doctor.compose_config(
        "doctor", [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'out'}"]
    )
    report = doctor.collect_report(cfg, Hardware(0))
    assert (
        report.software["cuda available"] in ("yes", "no") and report.software["torch"] == torch.__version__
    )
    assert report.gpus == []
    presets = {p.name: p for p in report.presets}
    assert set(presets) == set(doctor.experiment_names()) >= {"demo", "paper_cc512", "mias256"}
    assert presets["demo"].fits and presets["demo"].verdict.startswith("runs on the CPU")
    assert not presets["paper_cc512"].fits and "add trainer=cpu" in presets["paper_cc512"].verdict
    assert presets["paper_cc512"].devices == 2 and presets["paper_cc512"].resolution == 512
    # Config-f at 512 px: ~59 M parameters (G 30.3 M + D 29.0 M); its checkpoint is hundreds of MiB.
    assert 55 < presets["paper_cc512"].params_m < 65 and presets["paper_cc512"].checkpoint_mib > 500
    assert presets["demo"].memory_gib < presets["mias256"].memory_gib
    weights = {w.filename: w for w in report.weights}
    assert set(weights) == {
        "vgg16-397923af.pth",
        "alexnet-owt-7be5be79.pth",
        "weights-inception-2015-12-05-6726825d.pth",
    }
    assert weights["alexnet-owt-7be5be79.pth"].present and not weights["vgg16-397923af.pth"].present
    assert weights["vgg16-397923af.pth"].path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert report.disk["free_gib"] > 0 and report.disk["output_dir"] == tmp_path / "out"
    datasets = {d.name: d for d in report.datasets}
    toy = datasets["toy_cc_32"]
    record = read_split_record(data_dir / "prepared" / "toy_cc_32")
    assert toy.images == 12 and toy.fingerprint == record["fingerprint"]["digest"]  # type: ignore[index]
    assert sum(n for per_label in toy.counts.values() for n in per_label.values()) == 12
    assert set(toy.counts["train"]) == {"normal"}
    assert datasets["unsplit_cc_32"].note.startswith("not split yet")

    text = doctor.render_report(report)
    for heading in ("== software", "== GPUs", "== presets", "== weights", "== disk", "== prepared datasets"):
        assert heading in text
    assert "MISSING: put vgg16-397923af.pth" in text and "toy_cc_32: 12 image(s)" in text
    assert "paper_cc512: DOES NOT FIT" in text


def test_presets_on_gpus_devices_and_memory() -> None:
    two = doctor.preset_report("paper_cc512", Hardware(2), GPU_80)
    assert two.fits and two.verdict == "runs on 2 GPU(s)" and two.devices == 2
    one = doctor.preset_report("paper_cc512", Hardware(1), GPU_80[:1])
    assert one.fits and one.devices == 1 and "capped, global batch 4 instead of 8" in one.verdict
    small = [dict(GPU_80[0], memory_gib=4.0)]
    tight = doctor.preset_report("mias256", Hardware(1), small)
    assert not tight.fits and "lower data.loader.batch_size" in tight.verdict
    # The suggested fix (a smaller per-device batch) lowers the estimate.
    smaller = doctor.preset_report("mias256", Hardware(1), small, ["data.loader.batch_size=2"])
    assert smaller.memory_gib < tight.memory_gib


def test_entry_point_prints_the_report(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = doctor.main([f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}"])
    assert capsys.readouterr().out == text and "toy_cc_32" in text
