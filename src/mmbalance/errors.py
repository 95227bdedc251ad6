"""Exception types raised on bad input. The command line turns them into exit code 2."""


class MMBalanceError(Exception):
    """Base class of every error mmbalance raises on purpose."""


class ConfigError(MMBalanceError, ValueError):
    """An unknown key, a wrong type or an out-of-range value in a configuration."""


class DataError(MMBalanceError, ValueError):
    """A data file is missing, unreadable or malformed."""


class NonFiniteLossError(MMBalanceError, FloatingPointError):
    """A loss term became NaN or Inf during training."""
