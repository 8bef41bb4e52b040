"""The core's errors live in lorair_desktop.errors (torch-free, so the app and bridge tools can share them)."""

from ..errors import (
    Cancelled,
    CheckpointError,
    ConfigError,
    DeviceError,
    ExpertError,
    ImageError,
    LoraIRError,
    ModelNotFound,
    ModelNotTrained,
)

__all__ = [
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "ExpertError",
    "ImageError",
    "LoraIRError",
    "ModelNotFound",
    "ModelNotTrained",
]
