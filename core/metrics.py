"""Scores shown beside generated images, shared by every tab.

* CLIP text-image score: cosine similarity of open_clip embeddings of an image and its
  prompt (ViT-B/16, OpenAI weights, in real use).
* Style consistency of a set: mean pairwise cosine similarity of DINO ViT-B/8 embeddings
  (timm), the Style-Aligned paper's measure.
* Style similarity to a style image: cosine similarity of CLIP image embeddings (StyleDrop).
* DINO similarity to reference images: cosine similarity of an image's DINO ViT-B/8 embedding
  with the mean of the references' (normalised) embeddings; the issue-18 ranking measures
  content (references: the content image) and style (references: the style images) with it.

Offline (the tiny family) the same classes are built with tiny random weights, so the code
path is the real one; the numbers then mean nothing and the UI says so.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError

log = logging.getLogger(__name__)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tensor(images: Sequence[Image.Image], size: int, mean, std, device) -> torch.Tensor:
    import numpy as np

    batch = []
    for img in images:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(batch)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.to(device)


class Metrics:
    """Lazily loaded scoring models; `tiny=True` builds random tiny ones offline."""

    def __init__(self, tiny: bool, device: torch.device | str = "cpu"):
        self.tiny = tiny
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._clip = None
        self._dino = None

    @property
    def note(self) -> str:
        return ("tiny random scoring models (offline mode): the numbers exercise the code, "
                "they do not measure quality") if self.tiny else "open_clip ViT-B/16, DINO ViT-B/8"

    # ---------------------------------------------------------------- models
    def clip(self):
        with self._lock:
            if self._clip is None:
                import open_clip

                if self.tiny:
                    torch.manual_seed(0)
                    model = open_clip.CLIP(
                        embed_dim=32,
                        vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
                    size = 32
                else:
                    try:
                        model = open_clip.create_model("ViT-B-16", pretrained="openai")
                    except Exception as exc:  # noqa: BLE001
                        raise UserError(f"Could not load CLIP ViT-B/16 for scoring: {exc}") from None
                    size = 224
                self._clip = (model.eval().requires_grad_(False).to(self.device), size,
                              open_clip.get_tokenizer("ViT-B-16"))
            return self._clip

    def dino(self):
        with self._lock:
            if self._dino is None:
                import timm

                if self.tiny:
                    torch.manual_seed(0)
                    model = timm.models.vision_transformer.VisionTransformer(
                        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
                    size = 32
                else:
                    try:
                        model = timm.create_model("vit_base_patch8_224.dino", pretrained=True, num_classes=0)
                    except Exception as exc:  # noqa: BLE001
                        raise UserError(f"Could not load DINO ViT-B/8 for scoring: {exc}") from None
                    size = 224
                self._dino = (model.eval().requires_grad_(False).to(self.device), size)
            return self._dino

    # ---------------------------------------------------------------- scores
    @torch.no_grad()
    def clip_image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        model, size, _ = self.clip()
        return F.normalize(model.encode_image(_tensor(images, size, CLIP_MEAN, CLIP_STD, self.device)).float(), dim=-1)

    @torch.no_grad()
    def clip_text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        model, _, tokenizer = self.clip()
        return F.normalize(model.encode_text(tokenizer(list(texts)).to(self.device)).float(), dim=-1)

    def clip_text_scores(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each image with its text."""
        if len(images) != len(texts):
            raise ValueError("one text per image")
        sims = (self.clip_image_embeddings(images) * self.clip_text_embeddings(texts)).sum(-1)
        return [round(float(s), 4) for s in sims]

    def clip_style_scores(self, images: Sequence[Image.Image], style_images: Sequence[Image.Image]) -> list[float]:
        """Cosine similarity of each image's CLIP embedding with the mean style embedding."""
        style = F.normalize(self.clip_image_embeddings(style_images).mean(0, keepdim=True), dim=-1)
        return [round(float(s), 4) for s in (self.clip_image_embeddings(images) @ style.T)[:, 0]]

    @torch.no_grad()
    def dino_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-length DINO embeddings (the CLS token of ViT-B/8), one row per image."""
        model, size = self.dino()
        return F.normalize(model(_tensor(images, size, IMAGENET_MEAN, IMAGENET_STD, self.device)).float(), dim=-1)

    def dino_similarity(self, images: Sequence[Image.Image], references: Sequence[Image.Image]) -> list[float]:
        """Cosine similarity of each image's DINO embedding with the mean reference embedding
        (the references' unit embeddings averaged, then normalised again; one reference: its own).
        The ranking's content measure (reference: the content image) and style measure
        (references: the style images)."""
        if not references:
            raise ValueError("at least one reference image")
        ref = F.normalize(self.dino_embeddings(references).mean(0, keepdim=True), dim=-1)
        return [round(float(s), 4) for s in (self.dino_embeddings(images) @ ref.T)[:, 0]]

    @torch.no_grad()
    def dino_consistency(self, images: Sequence[Image.Image]) -> float | None:
        """Mean pairwise cosine similarity of DINO embeddings (None for fewer than 2 images)."""
        if len(images) < 2:
            return None
        emb = self.dino_embeddings(images)
        pairs = [float(emb[i] @ emb[j]) for i, j in itertools.combinations(range(len(images)), 2)]
        return round(sum(pairs) / len(pairs), 4)
