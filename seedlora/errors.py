"""Errors with actionable one-line messages.

Every error a user can cause derives from SeedLoraError; the CLI prints it as
`error: <message>` and exits non-zero. Messages name the file, the module and the fix.
"""


class SeedLoraError(Exception):
    """Base class for every user-facing seedlora error."""


class AdapterFormatError(SeedLoraError):
    """An adapter folder is missing files, is corrupt, or holds values we cannot use."""


class UnsupportedFeatureError(SeedLoraError):
    """The input uses a PEFT feature seedlora does not merge (DoRA, lora bias, modules_to_save)."""


class IncompatibleInputsError(SeedLoraError):
    """Inputs disagree: different base shapes, target modules or tensor names."""


class MethodError(SeedLoraError):
    """Unknown merge method, unknown parameter, or a parameter value out of range."""


class OutputExistsError(SeedLoraError):
    """The output folder exists and is not empty, and overwrite was not asked for."""
