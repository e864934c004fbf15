"""Errors with actionable one-line messages.

Every error a user can cause derives from SeedLoraError; the CLI prints it as
`error: <message>` and exits non-zero. Messages name the file, the module and the fix.
"""


class SeedLoraError(Exception):
    """Base class for every user-facing seedlora error."""


class InputFormatError(SeedLoraError):
    """An input file or folder is missing, corrupt, or holds values we cannot use."""


class AdapterFormatError(InputFormatError):
    """An adapter folder is missing files, is corrupt, or holds values we cannot use."""


class ModelFormatError(InputFormatError):
    """A model folder is missing weights or files, or its shards disagree with its index."""


class UnsupportedFeatureError(SeedLoraError):
    """The input uses a PEFT feature seedlora does not merge (see peft_format.FEATURES)."""


class IncompatibleInputsError(SeedLoraError):
    """Inputs disagree: different base shapes, layouts or tensor names."""


class MethodError(SeedLoraError):
    """Unknown merge method, unknown parameter, or a parameter value out of range."""


class OutputExistsError(SeedLoraError):
    """The output folder exists and is not empty, and overwrite was not asked for."""


class UnsafeOutputError(SeedLoraError):
    """The output would overwrite or sit inside an input or the base model."""


class HubError(InputFormatError):
    """A Hub id (org/name[@revision]) could not be resolved to a folder: not cached, not found, no access."""


class ConfigError(SeedLoraError):
    """A merge config file has an unknown key, a value of the wrong type, or cannot be read."""
