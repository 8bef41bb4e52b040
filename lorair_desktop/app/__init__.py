"""The desktop app: a PySide6 photo window for restoration. Talks to the worker only through
`lorair_desktop.bridge` and never imports torch, so a model crash cannot take the GUI down."""
