"""LoRA-IR for Krita: restore the selection with the local LoRA-IR worker, as a new layer.

Krita imports this package when the plugin is enabled; everything Krita-specific is in `host`.
Outside Krita (tools, tests of the logic in `restore`) importing the package registers nothing.
"""

import importlib.util

if importlib.util.find_spec("krita") is not None:
    from .host import register

    register()
