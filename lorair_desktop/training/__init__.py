"""Training data for LoRA-IR: degradation synthesis, the offline photo set, datasets.

Modules: ``degradations`` (seeded synthetic degradations, one per expert), ``photos`` (fetch and
verify the manifest photographs), ``dataset`` (in-memory image bank, random textured crops,
fixed validation sets).
"""
