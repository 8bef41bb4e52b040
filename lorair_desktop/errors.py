"""Named errors of the model core. Each carries a one-line message and a hint the user can act on."""

from __future__ import annotations

import sys


class LoraIRError(Exception):
    """Base of every error a user may see. `code` is stable and travels over the wire."""

    code = "lorair_error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def report_error(exc: LoraIRError) -> int:
    """Print a command's error and its hint on stderr, as every command line does; returns exit status 2."""
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    return 2


class ConfigError(LoraIRError):
    code = "bad_config"


class CheckpointError(LoraIRError):
    code = "bad_checkpoint"


class ModelNotFound(LoraIRError):
    code = "model_not_found"


class ModelNotTrained(LoraIRError):
    code = "model_not_trained"


class ExpertError(LoraIRError):
    code = "bad_experts"


class ImageError(LoraIRError):
    code = "bad_image"


class DeviceError(LoraIRError):
    code = "bad_device"


class Cancelled(LoraIRError):
    code = "cancelled"
