"""Tiny end to end: phantoms with twins -> train_encoder (and resume) -> encoder-initialised scoring.

Covers the chain `make demo` runs after the GAN: the encoder is trained on the normal training
images of a (random, tiny) generator, exported as encoder.pt, and scoring starts from its codes with
zero projection steps (f-AnoGAN's one pass); score.method=auto picks on validation, threshold.json
records the pick, and the oracle block is computed from the lesion-free twins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import mammo_anogan.utils.config  # noqa: F401
from mammo_anogan.utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
DATA = [
    "data=demo",
    "data.resolution=32",
    "data.synthetic.num_normal_patients=6",
    "data.synthetic.num_abnormal_patients=4",
    "data.synthetic.height=64",
    "data.synthetic.width=48",
]


def _compose(name: str, root: Path, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.data_dir={root / 'data'}", *DATA, *overrides])
    if "logger" in cfg:
        cfg.logger = None  # no W&B run in unit tests
    return cfg


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mammo_anogan.models.stylegan2 import Discriminator, Generator, save_network
    from mammo_anogan.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("encoder_e2e")
    prepare_dataset(
        _compose("prepare", root, "prepare.workers=0", "prepare.progress=false", "prepare.salt_seed=0")
    )
    torch.manual_seed(0)
    generator = Generator(
        z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16, mapping_layers=1
    )
    discriminator = Discriminator(img_resolution=32, channel_base=256, channel_max=16)
    save_network(generator, root / "gan" / "generator.pt")
    save_network(discriminator, root / "gan" / "discriminator.pt")
    return {"root": root, "generator": root / "gan" / "generator.pt"}


def _encoder_cfg(workspace: dict[str, Path], run_dir: Path, *extra: str):
    return _compose(
        "train_encoder",
        workspace["root"],
        f"generator={workspace['generator']}",
        "trainer=cpu",
        "++trainer.enable_progress_bar=false",
        "data.loader.batch_size=8",
        "encoder_train.channel_base=256",
        "encoder_train.channel_max=16",
        "encoder_train.perceptual=false",
        "checkpoint.every_n_kimg=0.008",
        f"+run_dir={run_dir}",
        *extra,
    )


def test_train_encoder_resume_then_one_pass_scoring_with_auto_and_oracle(workspace, tmp_path) -> None:
    from mammo_anogan.models.encoder import load_encoder
    from mammo_anogan.score import run_score
    from mammo_anogan.train_encoder import train_encoder
    from mammo_anogan.utils.io import safe_torch_load

    enc_dir = tmp_path / "encoder"
    first = train_encoder(_encoder_cfg(workspace, enc_dir, "encoder_train.total_kimg=0.008"))
    assert first == enc_dir / "encoder.pt" and (enc_dir / "reconstructions.png").is_file()
    progress = safe_torch_load(enc_dir / "checkpoints" / "last.ckpt")["encoder_progress"]["cur_nimg"]
    assert progress == 8
    # resume the same run for one more batch: it continues from the saved image count
    train_encoder(_encoder_cfg(workspace, enc_dir, "encoder_train.total_kimg=0.016", "ckpt_path=last"))
    resumed = safe_torch_load(enc_dir / "checkpoints" / "last.ckpt")["encoder_progress"]["cur_nimg"]
    assert resumed == 16
    encoder = load_encoder(enc_dir / "encoder.pt")
    assert encoder.config["generator_hash"] and encoder.config["img_resolution"] == 32

    score_overrides = (
        f"generator={workspace['generator']}",
        f"encoder={enc_dir / 'encoder.pt'}",
        "projection.init=encoder",
        "projection.steps=0",
        "projection.space=w_plus",
        "projection.loss=mse",
        "projection.w_std_samples=100",
        "projection.batch_images=16",
        "score.method=auto",
        "score.n_bootstrap=20",
        "score.num_cases=1",
        "++trainer.enable_progress_bar=false",
    )
    run_dir = tmp_path / "score"
    metrics = run_score(_compose("score", workspace["root"], *score_overrides), run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["init"] == "encoder" and saved["steps"] == 0
    assert saved["score_method_requested"] == "auto"
    aucs = saved["auto_validation_auc"]
    assert saved["score_method"] == max(aucs, key=lambda m: (aucs[m], -list(aucs).index(m)))
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["threshold_source"] == "validation_youden"
    oracle = saved["oracle"]
    assert oracle["n_abnormal"] == metrics["n_abnormal"] and 0.5 <= oracle["auc"] <= 1.0
    assert 0.0 <= oracle["hit_rate"] <= 1.0 and oracle["threshold_source"] == "validation_youden"
    threshold = json.loads((run_dir / "threshold.json").read_text())
    assert (
        threshold["score_method"] == saved["score_method"] and threshold["score_method_requested"] == "auto"
    )
    assert {"roc.png", "cases.png"} <= {p.name for p in run_dir.iterdir()}

    # reusing the threshold with method auto takes the recorded pick; it is never refitted on test
    reuse = run_score(
        _compose(
            "score", workspace["root"], *score_overrides, f"score.threshold_from={run_dir}",
            "score.splits=[test]", "score.figures=false", "score.oracle=false",
        ),
        tmp_path / "reuse",
    )  # fmt: skip
    assert reuse["score_method"] == saved["score_method"] and reuse["threshold"] == pytest.approx(
        saved["threshold"]
    )
    assert reuse["threshold_source"] == "threshold_from"
    # ... and naming the pick explicitly (what the error of another method advises) reuses it too
    named = [o for o in score_overrides if not o.startswith("score.method=")]
    explicit = run_score(
        _compose(
            "score", workspace["root"], *named, f"score.method={saved['score_method']}",
            f"score.threshold_from={run_dir}", "score.splits=[test]", "score.figures=false",
            "score.oracle=false",
        ),
        tmp_path / "explicit",
    )  # fmt: skip
    assert explicit["threshold"] == pytest.approx(saved["threshold"])
    assert explicit["auc"] == pytest.approx(reuse["auc"])
    # a threshold fitted for an explicit method is reused by auto as well (auto takes the recorded method)
    fitted = _compose(
        "score", workspace["root"], *named, f"score.method={saved['score_method']}", "score.figures=false",
        "score.oracle=false",
    )  # fmt: skip
    run_score(fitted, tmp_path / "fitted")
    again = run_score(
        _compose(
            "score", workspace["root"], *score_overrides, f"score.threshold_from={tmp_path / 'fitted'}",
            "score.splits=[test]", "score.figures=false", "score.oracle=false",
        ),
        tmp_path / "again",
    )  # fmt: skip
    assert again["score_method"] == saved["score_method"] and again["threshold"] == pytest.approx(
        saved["threshold"]
    )


def test_encoder_of_another_generator_is_refused(workspace, tmp_path) -> None:
    from mammo_anogan.models.encoder import encoder_for_generator, save_encoder
    from mammo_anogan.models.stylegan2 import load_generator
    from mammo_anogan.score import run_score

    stranger = encoder_for_generator(
        load_generator(workspace["generator"]), channel_base=256, channel_max=16, generator_hash="0" * 16
    )
    save_encoder(stranger, tmp_path / "encoder.pt")
    cfg = _compose(
        "score",
        workspace["root"],
        f"generator={workspace['generator']}",
        f"encoder={tmp_path / 'encoder.pt'}",
        "projection.init=encoder",
        "projection.steps=0",
        "projection.space=w_plus",
    )
    with pytest.raises(UserError, match="trained for generator"):
        run_score(cfg, tmp_path / "run")
    without = _compose(
        "score", workspace["root"], f"generator={workspace['generator']}", "projection.init=encoder",
        "projection.steps=0", "projection.space=w_plus",
    )  # fmt: skip
    with pytest.raises(UserError, match="needs encoder=PATH"):
        run_score(without, tmp_path / "run2")


def test_resume_refuses_a_scores_csv_with_other_columns(tmp_path) -> None:
    from mammo_anogan.anomaly.outputs import SCORES_FILE, ScoreWriter

    (tmp_path / SCORES_FILE).write_text("image_id,split,label,score,score_mean_map\nabc,val,normal,0.1,0.1\n")
    with pytest.raises(UserError, match="other columns"):
        ScoreWriter(tmp_path)
    fresh = tmp_path / "fresh"
    ScoreWriter(fresh)  # a new run dir gets today's header, and appending to it again is fine
    ScoreWriter(fresh)


def test_train_encoder_resume_refuses_another_generator_or_trunk(workspace, tmp_path) -> None:
    from mammo_anogan.models.stylegan2 import Generator, save_network
    from mammo_anogan.train_encoder import train_encoder

    enc_dir = tmp_path / "encoder"
    train_encoder(_encoder_cfg(workspace, enc_dir, "encoder_train.total_kimg=0.008", "export=false"))
    torch.manual_seed(1)
    other = Generator(
        z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16, mapping_layers=1
    )
    other_path = tmp_path / "other" / "generator.pt"
    save_network(other, other_path)
    (tmp_path / "other" / "discriminator.pt").write_bytes(
        (workspace["generator"].parent / "discriminator.pt").read_bytes()
    )
    resume = ("encoder_train.total_kimg=0.016", "ckpt_path=last")
    with pytest.raises(UserError, match=r"different settings: generator=\w+ \(now \w+\)"):
        train_encoder(_encoder_cfg(workspace, enc_dir, *resume, f"generator={other_path}"))
    with pytest.raises(UserError, match=re.escape("encoder_train.channel_max=16 (now 8)")):
        train_encoder(_encoder_cfg(workspace, enc_dir, *resume, "encoder_train.channel_max=8"))
    assert not (enc_dir / "encoder.pt").exists()  # refused before any export


def test_encoder_perceptual_true_without_weights_names_encoder_keys(tmp_path) -> None:
    from mammo_anogan.train_encoder import perceptual_network
    from mammo_anogan.training.encoder_module import encoder_settings

    settings = encoder_settings({"perceptual": "true", "lpips_weights": str(tmp_path / "vgg16.pth")})
    with pytest.raises(UserError, match="encoder_train.lpips_weights=") as err:
        perceptual_network(settings)
    assert "projection." not in str(err.value)
    assert perceptual_network({**settings, "perceptual": "auto"}) is None  # auto: no perceptual term


def test_score_resume_and_threshold_refuse_a_toggled_refinement(workspace, tmp_path) -> None:
    from mammo_anogan.anomaly.outputs import SCORES_FILE
    from mammo_anogan.run_state import check_threshold_record, score_start_checks, start_score_run_dir
    from mammo_anogan.score import projection_settings

    base = (f"generator={workspace['generator']}", "projection.loss=mse", "projection.steps=1")
    settings = {
        refine: _compose("score", workspace["root"], *base, f"projection.refine.enabled={refine}")
        for refine in (False, True)
    }
    for before, after in ((False, True), (True, False)):
        run_dir = tmp_path / f"run_{before}"
        cfg = settings[before]
        state = score_start_checks(cfg, run_dir, projection_settings(cfg.projection))
        start_score_run_dir(run_dir, state.scores, resume=True)
        (run_dir / SCORES_FILE).write_text("image_id,split\nabc,val\n")  # rows scored with `before`
        changed = f"projection.refine.enabled={str(before).lower()} (now {str(after).lower()})"
        cfg = settings[after]
        with pytest.raises(UserError, match=re.escape(changed)):
            score_start_checks(cfg, run_dir, projection_settings(cfg.projection))
        record = {"fingerprint": state.threshold.to_dict()}
        now = score_start_checks(cfg, tmp_path / f"new_{before}", projection_settings(cfg.projection))
        with pytest.raises(UserError, match=re.escape(changed)):
            check_threshold_record(record, now.threshold, "earlier")
