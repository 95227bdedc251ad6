"""The data check on Something-Something's HDF5 entries that are not one encoded image per
frame: decoded pixels and groups are reported as such, with the reader's wording."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mmbalance.config import DataConfig
from mmbalance.data import DATASETS, check
from mmbalance.errors import DataError
from mmbalance.testing.fixtures import write_sthsth


@pytest.fixture
def sthsth(tmp_path):
    (tmp_path / "s").mkdir()
    rows = write_sthsth(tmp_path / "s", train=4, val=2, frames=3)
    return tmp_path / "s", rows, DATASETS["sthsth"](DataConfig(root=str(tmp_path / "s"), image_size=16))


def _replace(path, video, **dataset):
    with h5py.File(path, "a") as f:
        del f[video]
        if dataset:
            f.create_dataset(video, **dataset)
        else:
            f.create_group(video)


def test_decoded_pixels_are_named_as_the_reader_names_them(sthsth):
    root, rows, bundle = sthsth
    video = rows["test"][0][0]
    _replace(root / "dataset.hdf5", video, data=np.zeros((3, 8, 8, 3), np.uint8))
    message = (rf"dataset.hdf5: video '{video}' holds an array of shape \(3, 8, 8, 3\) \(decoded pixels\?\); "
               r"expected one encoded image \(JPEG bytes\) per frame$")
    with pytest.raises(DataError, match=message):
        check.check_bundle(bundle, "sthsth", root)
    index = [v for v, _ in bundle.test.items].index(video)
    with pytest.raises(DataError, match=message):
        bundle.test[index]  # the reader says the same


def test_a_group_in_place_of_a_video_is_named(sthsth):
    root, rows, bundle = sthsth
    video = rows["train"][1][0]
    _replace(root / "flow_dataset.hdf5", video)
    with pytest.raises(DataError, match=rf"flow_dataset.hdf5: video '{video}' is an HDF5 group, not a dataset"):
        check.check_bundle(bundle, "sthsth", root)
