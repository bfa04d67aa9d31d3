"""The banner at the top of the app: which model, on what device, and whether it is loading,
ready, or failed (with the reason and the fix). It follows the background load: a page polls
once a second while the model loads, then stops."""
from __future__ import annotations

import gradio as gr

from .common import AppContext, scrub_paths

POLL_S = 1.0


def health_markdown(health) -> str:
    """The banner's text for a core.engine.Health."""
    where = f"`{health.model}` on `{health.device}` ({health.dtype})"
    if health.state == "ready":
        text = f"**Ready**: model {where}."
    elif health.state == "loading":
        step = f" {health.detail}." if health.detail else ""
        text = f"**Loading** the model {where}...{step} The tabs work once it is loaded."
    else:
        reason, _, fix = scrub_paths(health.detail).partition("To fix it:")
        text = f"**The model could not be loaded**: {where}. {reason.strip()}"
        if fix.strip():
            text += f"\n\n**To fix it**: {fix.strip()}"
    if getattr(health, "low_vram", False):
        why = f" ({health.low_vram_reason})" if getattr(health, "low_vram_reason", "") else ""
        offload = "idle text encoders wait on the CPU, " if health.device.startswith("cuda") else ""
        text += (f"\n\n**Low-VRAM mode**{why}: {offload}the VAE decodes in tiles (fp16-safe), training "
                 "uses gradient checkpointing and 8-bit Adam; slower, but it fits a smaller GPU.")
    if health.offline:
        text += ("\n\n*Offline tiny models: images are noise, the machinery is real; sizes are capped "
                 "at 256 px.*")
    return text


class HealthBanner:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def health(self) -> dict:
        """The model's state: model, device, dtype, state (loading / ready / failed), whether the
        low-memory mode is on, detail."""
        h = self.ctx.engine.health()
        return {"state": h.state, "model": h.model, "device": h.device, "dtype": h.dtype,
                "offline": h.offline, "low_vram": h.low_vram, "detail": scrub_paths(h.detail)}

    def poll(self):
        h = self.ctx.engine.health()
        return health_markdown(h), gr.Timer(active=h.state == "loading")

    def build(self, demo) -> None:
        h = self.ctx.engine.health()
        banner = gr.Markdown(health_markdown(h), elem_id="health")
        timer = gr.Timer(POLL_S, active=h.state == "loading")
        timer.tick(self.poll, None, [banner, timer], api_visibility="private", show_progress="hidden",
                   queue=False)
        demo.load(self.poll, None, [banner, timer], api_visibility="private", queue=False)
        gr.api(self.health, api_name="health", concurrency_limit=None)
