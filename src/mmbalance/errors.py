"""Exception types raised on bad input. The command line turns them into exit code 2."""


class MMBalanceError(Exception):
    """Base class of every error mmbalance raises on purpose."""


class ConfigError(MMBalanceError, ValueError):
    """An unknown key, a wrong type or an out-of-range value in a configuration."""


class DataError(MMBalanceError, ValueError):
    """A data file is missing, unreadable or malformed."""


class NonFiniteLossError(MMBalanceError, FloatingPointError):
    """A loss term became NaN or Inf during training."""


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after writing ``last.ckpt`` (not an error: the CLI
    prints how to continue and exits with 128 + the signal number).

    Attributes:
        signum: the signal received.
        epoch, step: the epoch and global step stored in ``last.ckpt``.
        rank: the DDP rank that raised it (only rank 0 reports).
    """

    def __init__(self, signum: int, epoch: int, step: int, rank: int = 0) -> None:
        super().__init__(f"interrupted at epoch {epoch} step {step}")
        self.signum, self.epoch, self.step, self.rank = signum, epoch, step, rank
