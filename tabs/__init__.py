"""The app's tabs: widgets and event wiring over core/, no model math.

Each tab module defines a `Tab` subclass (tabs.common.Tab) and

    TITLE: str                               # the tab's label
    build = XTab.mount                       # called inside `with gr.Tab(TITLE):`

The class's handlers are plain methods with named parameters that validate their inputs
(core.validate) and hand long jobs to core (engine.run); `build()` only lays out widgets and
wires events to them. Tests build the class on a tiny engine and call the handlers directly
(tests/tabkit.py); a few client and browser tests check the wiring. `ctx`
(tabs.common.AppContext) carries the engine, the data folder and the parsed command-line flags.
"""

TAB_MODULES = [
    "tabs.style_aligned",
    "tabs.adain",
    "tabs.personalize",
    "tabs.styledrop",
    "tabs.blora",
    "tabs.svg",
]
