"""Why a result matched: a heat map of which parts of the result image are most like the query.

Both images meet the model again, on demand; nothing is stored. The query is prepared exactly as a
search prepares it (resize, centre crop: the pixels its vector was made of). The result is resized
whole, without a crop, onto a grid of about as many patches as the model's crop holds, so the map
covers all of it; DINOv2 interpolates its position embeddings to any grid.

The map: for each result patch token, its cosine similarity to
- `patches` (the default): the most similar query patch token, or
- `cls`: the query's CLS token (the token the query vector is made of).

Patch tokens are last_hidden_state[:, 1 + R:] (R = 0 for dinov2, the 4 register tokens for
dinov2_with_registers, whose order is CLS, registers, patches).
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .embed import Embedder
from .errors import ImageError, ModelLoadError, ModelMismatchError, QueryError
from .model import ModelSlot
from .records import MAX_PIXELS, Preprocess

METHODS = ("patches", "cls")
ALPHA = 0.5  # how much of the colour map covers the image


@dataclass(frozen=True, eq=False)
class Explanation:
    """A heat map over a result image.

    heat: (grid_h, grid_w) float32 cosine similarities (-1 to 1), one per result patch, rows top to
    bottom. image: the result, upright RGB. method: "patches" or "cls".
    """

    heat: np.ndarray
    image: Image.Image
    method: str

    def overlay(self, *, alpha: float = ALPHA) -> Image.Image:
        """The result image with the map upsampled onto it and blended in (`alpha` 0-1 of colour).
        Colours are relative to this map: its least similar patch is dark blue, its most similar yellow."""
        return overlay(self.image, self.heat, alpha=alpha)

    def png(self, *, alpha: float = ALPHA) -> bytes:
        """The overlay as PNG file bytes, of the result image's size."""
        out = io.BytesIO()
        self.overlay(alpha=alpha).save(out, format="PNG")
        return out.getvalue()


class Explainer:
    """Explanations with the model of one index. The torch network behind the embedder is found (or
    loaded) once and shared by threads.

    The torch, compile and openvino backends keep the eager torch model: explain uses it. The
    onnxruntime backend keeps none, so the checkpoint's torch model is loaded for explain (on the CPU),
    and its weights are checked against the model the backend runs.
    """

    def __init__(self, model: ModelSlot):
        self.model = model
        self._net: Any = None
        self._lock = threading.Lock()

    def network(self) -> Any:
        """The eval-mode Dinov2Model. Raises ModelLoadError, ModelMismatchError."""
        embedder = self.model.get()
        with self._lock:
            if self._net is None:
                self._net = _torch_network(embedder)
            return self._net

    def explain(self, query_pixels: np.ndarray, result: Image.Image, *, method: str = "patches") -> Explanation:
        """(crop_h, crop_w, 3) uint8 query pixels prepared for the model, and an upright RGB result
        image -> its Explanation. Raises QueryError for an unknown method, ModelLoadError."""
        if method not in METHODS:
            raise QueryError(f"unknown explain method {method!r}; use {' or '.join(METHODS)}")
        net = self.network()
        pre = self.model.get().preprocess
        patch = int(net.config.patch_size)
        grid = grid_for(*result.size, patch=patch, patches=(pre.crop_height // patch) * (pre.crop_width // patch))
        q_cls, q_patches = tokens(net, pre, np.asarray(query_pixels, np.uint8))
        _, r_patches = tokens(net, pre, whole(result, grid, patch=patch, resample=pre.resample))
        return Explanation(heat_map(q_cls, q_patches, r_patches, method=method).reshape(grid), result, method)


def load_result(data: bytes | Image.Image, *, name: str, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A result's file bytes (or a PIL image) -> the upright RGB image, at most `max_side` pixels
    along its longest side (None: full size). Raises ImageError."""
    from .decode import DecodeError, _to_rgb, _upright, load_rgb

    if isinstance(data, Image.Image):
        im = _to_rgb(_upright(data))
    else:
        try:
            im = load_rgb(data, min_side=max_side or 0, max_pixels=max_pixels)[0]
        except DecodeError as exc:
            raise ImageError(f"{name}: {exc.message}", kind=exc.kind) from None
    if max_side is not None and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def _torch_network(embedder: Embedder) -> Any:
    net = getattr(embedder, "net", None)
    if net is not None:
        return net
    fingerprint = getattr(embedder, "fingerprint", None)
    if getattr(embedder, "backend", None) is None or fingerprint is None:
        raise ModelLoadError("explain needs the DINOv2 torch model; this embedder has none")
    from transformers import AutoModel

    from .embed import weights_hash

    try:
        net = AutoModel.from_pretrained(fingerprint.model, local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - any load failure means the same: no torch model here
        raise ModelLoadError(f"explain needs the torch model of '{fingerprint.model}', which cannot be loaded ({type(exc).__name__})") from None
    if weights_hash(net) != fingerprint.weights:
        raise ModelMismatchError(f"the torch model at '{fingerprint.model}' is not the one this backend runs; index again")
    return net


def grid_for(width: int, height: int, *, patch: int, patches: int) -> tuple[int, int]:
    """A result image's size in pixels -> (grid_h, grid_w) patches: the image's aspect ratio with about
    `patches` patches in all, at least 1 and at most 4x the square side along either axis."""
    side = math.sqrt(patches)
    aspect = width / max(height, 1)
    grid_w = min(max(1, round(side * math.sqrt(aspect))), int(4 * side))
    grid_h = min(max(1, round(side / math.sqrt(aspect))), int(4 * side))
    return grid_h, grid_w


def whole(image: Image.Image, grid: tuple[int, int], *, patch: int, resample: int) -> np.ndarray:
    """The whole image resized to the grid -> (grid_h * patch, grid_w * patch, 3) uint8."""
    size = (grid[1] * patch, grid[0] * patch)
    return np.asarray(image.convert("RGB").resize(size, resample=resample), dtype=np.uint8)


def tokens(net: Any, pre: Preprocess, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) uint8, h and w multiples of the patch size -> (CLS (dim,), patch tokens (n, dim)),
    float32, as the model's last layer (after its final layer norm) gives them."""
    import torch

    device = next(net.parameters()).device
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(pixels, np.uint8)).permute(2, 0, 1)[None].float()  # a copy: torch wants it writable
    x = (x * pre.rescale - mean) / std
    with torch.inference_mode():
        hidden = net(pixel_values=x.to(device)).last_hidden_state[0].float().cpu().numpy()
    registers = int(getattr(net.config, "num_register_tokens", 0) or 0)
    return hidden[0], hidden[1 + registers :]


def heat_map(query_cls: np.ndarray, query_patches: np.ndarray, result_patches: np.ndarray, *, method: str) -> np.ndarray:
    """(dim,), (m, dim), (n, dim) tokens -> (n,) float32 cosine of each result patch with the best
    matching query patch (`patches`) or with the query's CLS token (`cls`)."""
    r = _unit(result_patches)
    if method == "cls":
        return (r @ _unit(query_cls[None])[0]).astype(np.float32)
    return (r @ _unit(query_patches).T).max(axis=1).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# A perceptual dark-blue -> teal -> yellow ramp (viridis's anchors), interpolated linearly.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def colour(values: np.ndarray) -> np.ndarray:
    """(h, w) values in 0-1 -> (h, w, 3) float32 RGB 0-255 on the ramp."""
    pos = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    frac = (pos - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def overlay(image: Image.Image, heat: np.ndarray, *, alpha: float = ALPHA) -> Image.Image:
    """Upsample a (grid_h, grid_w) map onto `image` (bilinear, patch centres on patch centres) and
    blend its colours in. Returns an RGB image of the same size. Raises QueryError for alpha outside 0-1."""
    if not 0.0 <= alpha <= 1.0:
        raise QueryError(f"alpha must be between 0 and 1 (got {alpha})")
    low, high = float(heat.min()), float(heat.max())
    scaled = (heat - low) / (high - low) if high > low else np.ones_like(heat)
    up = Image.fromarray(scaled.astype(np.float32)).resize(image.size, resample=Image.Resampling.BILINEAR)
    base = np.asarray(image.convert("RGB"), np.float32)
    blended = base * (1 - alpha) + colour(np.asarray(up)) * alpha
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
