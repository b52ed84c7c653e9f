"""Errors and warnings. Every library error derives from `MemlawError`; the CLI prints it as one line."""


class MemlawError(Exception):
    """Base class of every error memlaw raises on purpose (bad input, refused load, ...)."""


class ConfigError(MemlawError, ValueError):
    """A configuration value or a YAML file is invalid."""


class RecordError(MemlawError, ValueError):
    """A record file is malformed, or a record cannot be written exactly (file:line in the message)."""


class AdapterError(MemlawError, RuntimeError):
    """An adapter directory is missing, torn, tampered with, or belongs to another base model."""


class ModelError(MemlawError, RuntimeError):
    """A base model cannot be found or loaded."""


class DivergedError(MemlawError, FloatingPointError):
    """Training went non-finite (NaN or infinite loss or weights); nothing trained is kept."""


class OutputError(MemlawError, OSError):
    """A path memlaw was asked to write holds something it must not replace (a directory, a link, a device)."""


class StoreError(MemlawError, RuntimeError):
    """The results store cannot be opened or is inconsistent."""


class NotFittedError(MemlawError, AttributeError):
    """A fitted attribute was read before `fit` ran."""


class FitWarning(UserWarning):
    """A law fit did not converge or is poorly determined."""


class NotCertifiedError(MemlawError, RuntimeError):
    """A write ran but not every record certified, or a verify found a record not recalled exactly.

    Raised only on request (`WriteOutcome.raise_unless_certified`, `Verification.raise_unless_exact`):
    failing to certify is a result, not an error. The CLI exits 1 for it, not 2.
    """
