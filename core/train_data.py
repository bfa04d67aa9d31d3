"""The trainer's data, computed once before the first step (a part of `Trainer`, core/train.py).

VAE latents of the training and prior-preservation images and the prompts' text embeddings are
cached up front (`_cache`); with text-encoder LoRA the prompts are also tokenized once, and
`_encode_live` runs them through the text encoders at every step, exactly as the pipeline's
`encode_prompt` does, so the gradient reaches their LoRA.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from . import library


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class DataCache:
    """Mixin of `Trainer`: `latents`, `prior_latents`, `prompts`, `prior_prompts`, `text`
    ({prompt: embeddings}) and `tokens` ({prompt: {text encoder: (ids, mask)}})."""

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        pipe, dev = self.engine.pipe, self.engine.device
        out = {}
        library.disable_everywhere(self.engine)
        for p in dict.fromkeys(prompts):
            if self.engine.xl:
                emb, _, pooled, _ = pipe.encode_prompt(prompt=p, device=dev, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
                out[p] = {"emb": emb[0], "pooled": pooled[0]}
            else:
                emb, _ = pipe.encode_prompt(p, dev, 1, False)
                out[p] = {"emb": emb[0]}
        return out

    def _cache(self, ctx) -> None:
        res = self.engine.resolution
        ex, pr = self.recipe.examples, self.recipe.prior
        total = len(ex) + len(pr)
        lat = []
        for i, e in enumerate(list(ex) + list(pr)):
            ctx.progress(i + 1, total, f"Encoding training images {i + 1}/{total}")
            lat.append(self.engine.encode_image(e.image, res, res)[0])
        self.latents = torch.stack(lat[:len(ex)])
        self.prior_latents = torch.stack(lat[len(ex):]) if pr else None
        self.prompts = [e.prompt for e in ex]
        self.prior_prompts = [e.prompt for e in pr]
        self.text = self._encode_prompts(self.prompts + self.prior_prompts)
        if self.recipe.adapter.text_encoder_rank:
            self.tokens = self._tokenize(self.prompts + self.prior_prompts)

    def _tokenize(self, prompts: Sequence[str]) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """{prompt: {text encoder: (input ids, attention mask)}}, tokenized as `encode_prompt` does."""
        pipe = self.engine.pipe
        pairs = [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if self.engine.xl else [])
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in dict.fromkeys(prompts):
            out[p] = {}
            for comp, tok_name in pairs:
                tok = getattr(pipe, tok_name, None)
                if tok is None or getattr(pipe, comp, None) is None:
                    continue
                text = pipe.maybe_convert_prompt(p, tok) if hasattr(pipe, "maybe_convert_prompt") else p
                enc = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt")
                out[p][comp] = (enc.input_ids[0], enc.attention_mask[0])
        return out

    def _encode_live(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeddings, pooled or None) through the text encoders as they are now (with the
        training adapter, with grad): `StableDiffusionXLPipeline.encode_prompt` (penultimate
        hidden states of both encoders concatenated, pooled from the one that pools) or
        `StableDiffusionPipeline.encode_prompt` (last hidden state), from the cached ids."""
        pipe, dev = self.engine.pipe, self.engine.device
        ref = self.text[prompts[0]]

        def ids(comp: str, i: int = 0) -> torch.Tensor:
            return torch.stack([self.tokens[p][comp][i] for p in prompts]).to(dev)

        if self.engine.xl:
            embs, pooled = [], None
            for comp in ("text_encoder", "text_encoder_2"):
                te = getattr(pipe, comp, None)
                if te is None:
                    continue
                out = te(ids(comp), output_hidden_states=True)
                if pooled is None and out[0].ndim == 2:  # only the projection model pools
                    pooled = out[0]
                embs.append(out.hidden_states[-2])
            return torch.cat(embs, dim=-1).to(ref["emb"].dtype), pooled.to(ref["pooled"].dtype)
        te = pipe.text_encoder
        mask = ids("text_encoder", 1) if getattr(te.config, "use_attention_mask", False) else None
        return te(ids("text_encoder"), attention_mask=mask)[0].to(ref["emb"].dtype), None
