"""The LoRA-IR GIMP 3 plug-in package: `host` talks to GIMP, `logic` is plain Python."""
