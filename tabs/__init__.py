"""The app's tabs: widgets and event wiring only, no model math.

Each tab module defines

    TITLE: str                      # the tab's label
    def build(ctx: AppContext) -> None   # called inside `with gr.Tab(TITLE):`

and is listed in TAB_MODULES once it works. `ctx` (tabs.common.AppContext) carries the
engine, the data folder and the parsed command-line flags.
"""

TAB_MODULES = [
    "tabs.style_aligned",
    "tabs.adain",
    "tabs.personalize",
    "tabs.styledrop",
    "tabs.blora",
    "tabs.svg",
]
