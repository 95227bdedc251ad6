"""Data: the synthetic competition generator and users' own array files."""

from .arrays import ArrayDataset, MultimodalArrays, from_arrays, load_array_file, stratified_split
from .bundle import DATASETS, DataBundle
from .synthetic import KINDS, SyntheticSpec, make_synthetic

__all__ = ["DATASETS", "DataBundle", "ArrayDataset", "MultimodalArrays", "from_arrays", "load_array_file", "stratified_split",
           "KINDS", "SyntheticSpec", "make_synthetic"]
