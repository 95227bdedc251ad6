"""Data: the synthetic competition generator and users' own array files."""

from .arrays import ArrayDataset, MultimodalArrays, from_arrays, load_array_file, stratified_split
from .bundle import DATASETS, DataBundle, InputSpec, data_kind
from .synthetic import KINDS, SyntheticSpec, make_synthetic
from .affect import load_mosei, load_mosi
from .ave import load_ave
from .cremad import load_cremad
from .mfeat import load_mfeat
from .sthsth import load_sthsth
from .ucf import load_ucf51

DATASETS.update(cremad=load_cremad, ave=load_ave, ucf51=load_ucf51, mosi=load_mosi, mosei=load_mosei,
                sthsth=load_sthsth, mfeat=load_mfeat)

__all__ = ["DATASETS", "DataBundle", "InputSpec", "data_kind", "ArrayDataset", "MultimodalArrays", "from_arrays", "load_array_file", "stratified_split",
           "KINDS", "SyntheticSpec", "make_synthetic"]
