"""Errors a user can act on: the CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input or state the user can fix; the message says what is wrong and what to do."""

    exit_code = 1


class RecipeError(UserError):
    """A recipe that does not parse or validate."""


class StoreError(UserError):
    """A run store or result file that is missing, foreign, corrupt or inconsistent."""


class LockError(StoreError):
    """Another process holds the single-writer lock of a store."""


class DataError(UserError):
    """A dataset that cannot be found, read or prepared."""


class ParameterError(UserError, ValueError):
    """An estimator or analysis setting out of range (also a ValueError, as scikit-learn raises)."""


class TrainerError(UserError):
    """A recipe's trainer that cannot be imported, raised, or returned something other than T finite margins."""


class OutputError(StoreError):
    """An output path that may not be written: not a regular file, one of the inputs, existing without
    --force, or held by a writer."""
