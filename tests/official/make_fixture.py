"""Regenerate fixtures/setting1_official_keys.json from the official LoRA-IR code (not a test).

    .venv/bin/python tests/official/make_fixture.py /path/to/LoRA-IR.git [--rev HEAD]

Builds the official Setting I networks on the meta device (no memory, no weights) exactly as
`test_3input.py` does: `PriorFtModelL(**Setting1_Ft.yml network_g)` and `CLIPDeRouter(vision_tower,
cls_num=3)` with the transformers `openai/clip-vit-large-patch14-336` vision config (built from its
published hyper-parameters instead of downloading it), and records every state-dict key and shape.
The official files are read from the git directory into a temporary folder; the packages they
import but do not need (basicsr.utils, the arch auto-loader) are replaced by empty stubs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FILES = [
    "basicsr/models/archs/PriorFtModel_arch.py",
    "basicsr/models/archs/arch_util.py",
    "basicsr/models/archs/local_arch.py",
    "loralib/__init__.py",
    "loralib/layers.py",
    "loralib/utils.py",
    "classification/model.py",
    "classification/clip_encoder.py",
    "Setting1/options/Setting1_Ft.yml",
]
# openai/clip-vit-large-patch14-336's vision config (its config.json on the Hugging Face hub).
VIT_L_14_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def extract(git_dir: Path, rev: str, dest: Path) -> None:
    for f in FILES:
        text = subprocess.run(["git", "-C", str(git_dir), "show", f"{rev}:{f}"], check=True,
                              capture_output=True, text=True).stdout
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        (dest / f).write_text(text)
    for pkg in ("basicsr", "basicsr/models", "basicsr/models/archs", "classification"):
        (dest / pkg / "__init__.py").write_text("")
    (dest / "basicsr/utils").mkdir(exist_ok=True)
    (dest / "basicsr/utils/__init__.py").write_text("def get_root_logger(*a, **k):\n    return None\n")


def build(root: Path) -> dict[str, dict[str, list[int]]]:
    import torch
    import yaml
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    sys.path.insert(0, str(root))
    from basicsr.models.archs.PriorFtModel_arch import PriorFtModelL
    from classification.model import CLIPDeRouter

    opt = yaml.safe_load((root / "Setting1/options/Setting1_Ft.yml").read_text().replace("gt,'", "gt','")
                         .replace("lq,'", "lq','"))  # the released yml has two unbalanced quotes
    net_g = dict(opt["network_g"])
    net_g.pop("type")
    clip_opt = opt["network_clip"]
    # Offline stand-ins for from_pretrained: same architecture, no download.
    CLIPVisionModelWithProjection.from_pretrained = classmethod(  # type: ignore[method-assign]
        lambda cls, *a, **k: cls(CLIPVisionConfig(**VIT_L_14_336)))
    CLIPImageProcessor.from_pretrained = classmethod(lambda cls, *a, **k: None)  # type: ignore[method-assign]
    with torch.device("meta"):
        ir = PriorFtModelL(**net_g)
        router = CLIPDeRouter(clip_opt["vision_tower"], clip_opt["cls_num"])

    def shapes(m: torch.nn.Module) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in m.state_dict().items()}

    return {"network_g": net_g, "router": shapes(router), "ir": shapes(ir)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("git_dir", type=Path)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("-o", "--output", type=Path,
                    default=Path(__file__).parent / "fixtures" / "setting1_official_keys.json")
    args = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(args.git_dir), "rev-parse", args.rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.git_dir, rev, Path(tmp))
        data = build(Path(tmp))
    out = {"source": f"shallowdream204/LoRA-IR@{rev}", **data}
    args.output.write_text(json.dumps(out, indent=0) + "\n")
    print(f"{args.output}: {len(data['router'])} router keys, {len(data['ir'])} IR keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
