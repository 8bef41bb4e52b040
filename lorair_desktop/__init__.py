"""LoRA-IR Desktop: all-in-one image restoration for photo editors."""

__version__ = "0.1.0"

# The model every host uses unless told otherwise (kept here, torch-free, so light processes can name it).
DEFAULT_MODEL = "lorair-lite"
