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



def closest(word: str, choices) -> "str | None":
    """The choice closest to ``word`` by ``difflib`` (ratio >= 0.6), else None. Ties on the
    ratio go to a choice with the same letters (``mrc`` -> ``mcr``, not ``pmr``), then to the
    longer common prefix."""
    import difflib
    import os
    word = str(word)
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=5, cutoff=0.6)
    if not close:
        return None

    def rank(choice: str):
        return (difflib.SequenceMatcher(None, word, choice).ratio(), sorted(word) == sorted(choice),
                len(os.path.commonprefix([word, choice])))

    return max(close, key=rank)


def did_you_mean(word: str, choices) -> str:
    """``"did you mean X? "`` for the :func:`closest` choice, else ``""``: the piece an error
    message puts before its list of valid values."""
    match = closest(word, choices)
    return f"did you mean {match}? " if match else ""
