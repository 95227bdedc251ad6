"""The plain-PyTorch engine under the Lightning loop: one training step, the optimizer and
its schedule, and the run folder. Importing it loads no Lightning."""

from .optim import LRSchedule, build_optimizer, warmup_cosine
from .rundir import RunDir, atomic_write_bytes, atomic_write_text
from .step import train_step

__all__ = ["LRSchedule", "build_optimizer", "warmup_cosine", "RunDir", "atomic_write_bytes", "atomic_write_text",
           "train_step"]
