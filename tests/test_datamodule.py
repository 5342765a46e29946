"""MammoDataModule: batch format, ranges, splits, augmentation, resize path, error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset
from omegaconf import OmegaConf
from PIL import Image

from mammo_anogan.data.datamodule import MammoDataModule
from mammo_anogan.utils.errors import UserError

RES = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), 8, 4, resolution=RES)


def _all_batches(loader: torch.utils.data.DataLoader) -> list[dict]:
    return list(loader)


def test_batch_format_and_ranges(dataset: Path) -> None:
    dm = MammoDataModule(dataset, resolution=RES, batch_size=3)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 1, RES, RES) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == batch["lesion_mask"].shape == (3, 1, RES, RES)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["image"].min() == -1.0  # the black background
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    assert set(batch["lesion_mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["label"].dtype == torch.long and batch["label"].shape == (3,)
    assert isinstance(batch["label_name"], list) and isinstance(batch["image_id"], list)
    assert len(batch["image_id"]) == 3
    # The cached values equal the PNG on disk: x = img / 127.5 - 1.
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str).set_index("image_id")
    png = np.array(Image.open(dataset / manifest.loc[batch["image_id"][0], "image_path"]))
    torch.testing.assert_close(batch["image"][0, 0], torch.from_numpy(png).float() / 127.5 - 1)


def test_labels_lesions_and_splits(dataset: Path) -> None:
    dm = MammoDataModule(dataset, resolution=RES, batch_size=4)
    train_labels = torch.cat([b["label"] for b in _all_batches(dm.train_dataloader())])
    assert len(train_labels) > 0 and (train_labels == 0).all()
    evaluation = _all_batches(dm.val_dataloader()) + _all_batches(dm.test_dataloader())
    labels = torch.cat([b["label"] for b in evaluation])
    names = sum((b["label_name"] for b in evaluation), [])
    assert (labels == 1).sum() == 4 and (labels == 0).sum() > 0  # 4 abnormal patients, one lesion each
    assert all((name == "normal") == (code == 0) for name, code in zip(names, labels.tolist()))
    lesion_pixels = torch.cat([b["lesion_mask"].flatten(1).sum(1) for b in evaluation])
    assert ((lesion_pixels > 0) == (labels == 1)).all()
    ids = {split: set(dm.dataset(split).image_ids) for split in ("train", "val", "test")}
    assert sum(len(v) for v in ids.values()) == len(pd.read_csv(dataset / "manifest.csv"))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])


def test_train_loader_shuffles_and_drops_last(dataset: Path) -> None:
    dm = MammoDataModule(dataset, resolution=RES, batch_size=4)
    n_train = len(dm.dataset("train"))
    assert n_train > 4
    loader = dm.train_dataloader()
    assert loader.drop_last and all(len(b["image_id"]) == 4 for b in loader)
    small = MammoDataModule(dataset, resolution=RES, batch_size=n_train + 5)
    batches = _all_batches(small.train_dataloader())
    assert (
        not small.train_dataloader().drop_last
        and len(batches) == 1
        and len(batches[0]["image_id"]) == n_train
    )
    assert not dm.val_dataloader().drop_last


def test_augmentation_off_is_deterministic_on_changes_images(dataset: Path) -> None:
    plain = MammoDataModule(dataset, resolution=RES, batch_size=64)
    first, second = (next(iter(plain.test_dataloader())) for _ in range(2))
    torch.testing.assert_close(first["image"], second["image"])
    real = plain.real_images("train")
    train_batch = next(iter(plain.train_dataloader()))
    order = [plain.dataset("train").image_ids.index(i) for i in train_batch["image_id"]]
    torch.testing.assert_close(train_batch["image"], real[order])

    augmented = MammoDataModule(dataset, resolution=RES, batch_size=64, augment=True)
    batches = [next(iter(augmented.train_dataloader())) for _ in range(3)]
    ids = augmented.dataset("train").image_ids
    images = [b["image"][[b["image_id"].index(i) for i in ids]] for b in batches]
    assert not torch.equal(images[0], images[1]) or not torch.equal(images[1], images[2])
    for b in batches:
        assert b["image"].min() >= -1 and b["image"].max() <= 1
        assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
    # Augmentation never touches val/test.
    torch.testing.assert_close(next(iter(augmented.test_dataloader()))["image"], first["image"])


def test_real_images(dataset: Path) -> None:
    dm = MammoDataModule(dataset, resolution=RES, batch_size=2)
    real = dm.real_images("train", max_images=3)
    assert real.shape == (3, 1, RES, RES) and real.min() >= -1 and real.max() <= 1
    assert dm.real_images("val").shape[0] == len(dm.dataset("val"))


def test_resolution_mismatch_and_resize(dataset: Path) -> None:
    with pytest.raises(UserError, match="data.loader.resize=true"):
        MammoDataModule(dataset, resolution=16, batch_size=2).setup()
    dm = MammoDataModule(dataset, resolution=16, batch_size=2, resize=True)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16)
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    # The breast (chest wall at the left edge) survives the downscale with a similar area fraction.
    full = MammoDataModule(dataset, resolution=RES, batch_size=2).dataset("test").masks.float().mean()
    assert abs(dm.dataset("test").masks.float().mean().item() - full.item()) < 0.05


def test_resize_pads_non_square_on_the_right(tmp_path: Path) -> None:
    root = make_prepared_dataset(tmp_path / "ds", 4, 1, resolution=RES)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    for column in ("image_path", "mask_path"):
        for rel in manifest[column]:
            arr = np.asarray(Image.open(root / rel))
            Image.fromarray(np.ascontiguousarray(arr[:, : RES // 2])).save(root / rel)  # 32 high, 16 wide
    for rel in filter(None, manifest["lesion_mask_path"]):
        Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(root / rel))[:, : RES // 2])).save(
            root / rel
        )
    dm = MammoDataModule(root, resolution=RES, batch_size=2, resize=True)
    masks = dm.dataset("train").masks
    assert masks.shape[1:] == (RES, RES)
    assert masks[:, :, RES // 2 :].sum() == 0 and masks[:, :, : RES // 2].sum() > 0


def test_missing_dataset_names_prepare_command(tmp_path: Path) -> None:
    dm = MammoDataModule(tmp_path / "nowhere", resolution=RES, batch_size=2)
    with pytest.raises(UserError, match=r"python -m mammo_anogan\.prepare data="):
        dm.setup()


def test_missing_png_is_a_user_error(tmp_path: Path) -> None:
    root = make_prepared_dataset(tmp_path / "ds", 3, 1, resolution=16)
    next((root / "images").iterdir()).unlink()
    with pytest.raises(UserError, match="missing or unreadable"):
        MammoDataModule(root, resolution=16, batch_size=2).setup()


def test_from_config(dataset: Path) -> None:
    cfg = OmegaConf.create(
        {
            "dataset_dir": str(dataset),
            "resolution": RES,
            "split": {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 1, "test_ids": None},
            "loader": {"batch_size": 5, "num_workers": 0, "pin_memory": True, "augment": False},
        }
    )
    dm = MammoDataModule.from_config(cfg)
    assert (dm.batch_size, dm.val_fraction, dm.split_seed, dm.resize) == (5, 0.25, 1, False)
    assert len(next(iter(dm.val_dataloader()))["image_id"]) <= 5
    assert dm.train_dataloader().pin_memory is torch.cuda.is_available()


def test_loader_with_workers(dataset: Path) -> None:
    dm = MammoDataModule(
        dataset, resolution=RES, batch_size=4, num_workers=1, persistent_workers=True, augment=True
    )
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, RES, RES)
