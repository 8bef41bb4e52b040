"""The model core: LoRA-IR (DG-Router + LoRA-expert NAFNet) and inference. No Qt, no HTTP."""

from .checkpoint import DEFAULT_MODEL, load_checkpoint, load_model, resolve_model, save_checkpoint
from .config import ModelConfig, load_config
from .errors import LoraIRError
from .inference import Analysis, Restorer, RestoreResult
from .model import LoRAIR

__all__ = [
    "DEFAULT_MODEL",
    "Analysis",
    "LoRAIR",
    "LoraIRError",
    "ModelConfig",
    "RestoreResult",
    "Restorer",
    "load_checkpoint",
    "load_config",
    "load_model",
    "resolve_model",
    "save_checkpoint",
]
