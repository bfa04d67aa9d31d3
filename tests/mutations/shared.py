"""The other shared mechanisms: resident library adapters (weights per request) and jobs (Stop)."""
from . import Mutation

MUTATIONS = [
    Mutation("library-adapter-weights-ignored", "core/library.py",
             "self.unet.set_adapters(names, weights=[weights[i] for i in weights])",
             "self.unet.set_adapters(names, weights=[1.0 for i in weights])",
             ("tests/test_styledrop.py::test_subject_and_style_adapters_together",),
             "every active adapter at full weight whatever the slider says"),
    Mutation("jobs-late-stop-discards-the-result", "core/jobs.py",
             '        yield outcome["result"]\n', '        yield outcome["result"]\n        ctx.check()\n',
             ("tests/test_cancel_sweep.py::test_stop_leaves_the_engine_clean[vectorize-too late]",),
             "a Stop that arrives with a finished job's Result turns it into Cancelled"),
]
