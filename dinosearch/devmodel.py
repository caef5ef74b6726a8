"""Random-weight DINOv2 checkpoints for tests, benchmarks and the offline demo. Never used by indexing.

They are saved with `save_pretrained` and loaded back through the product's own `from_pretrained`
path, so everything but the weights is exercised. Their vectors mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

# The processor config facebook/dinov2-* ship: resize shortest edge 256 (bicubic), centre crop 224,
# rescale 1/255, ImageNet mean/std.
DINOV2_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}

SHAPES = {
    # ViT-S/14 as in facebook/dinov2-small: same compute as the real model.
    "vit-s14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, image_size=518),
    # ViT-S/14's output dimension (384) at a twelfth of its compute: catalogue rows of the real size
    # (a 1.5 kB vector each) in benchmarks that index many files.
    "wide": dict(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, mlp_ratio=4, image_size=224),
    # A few kB model for fast tests.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=224),
}


def save_random_dinov2(directory: str | Path, *, shape: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight DINOv2 checkpoint (config, safetensors, processor config) to `directory`."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Dinov2Config(patch_size=14, **SHAPES[shape])
    Dinov2Model(config).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR, indent=2))
    return directory
