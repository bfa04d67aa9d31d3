"""Hand-overs between tabs (issue 18): what one tab made, taken up by another in one click.

`link_tabs(ctx, tabs)` runs after every tab is built (app.build_app); `tabs` is the gr.Tabs whose
gr.Tab ids are the tab modules' names, so a hand-over can also show the receiving tab.
"""
from __future__ import annotations

import gradio as gr


def link_tabs(ctx, tabs: gr.Tabs) -> None:
    sa, sd = ctx.tabs.get("tabs.style_aligned"), ctx.tabs.get("tabs.styledrop")
    if sa is not None and sd is not None:
        # a Style-Aligned set becomes the style images of a new StyleDrop loop (round 1 trains on them)
        sa.ui.to_styledrop.click(sa.set_for_styledrop, [sa.ui.gallery, sa.ui.prompts, sa.ui.style],
                                 [sd.ui.style_files, sd.ui.content, sd.ui.style, tabs], api_visibility="private")
