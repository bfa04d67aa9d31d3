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

# Best of N in Personalize generation (issue 18): core/best_of.py on library.generate.
BO = "core/best_of.py"
BOT = "tests/test_personalize_best_of.py"
MUTATIONS += [
    Mutation("personalize-best-of-subject-and-style-swapped", BO,
             'references = {"content": subject_references(engine, list(weights), owner),\n'
             '                  "style": style_references(engine, style, owner)}',
             'references = {"content": style_references(engine, style, owner),\n'
             '                  "style": subject_references(engine, list(weights), owner)}',
             (f"{BOT}::test_order_equals_a_recomputation_from_the_returned_images",),
             "the subject measured against the style's images and the style against the subject's"),
    Mutation("personalize-best-of-seed-offset", BO,
             "seeds = ranking.candidate_seeds(seed, n)", "seeds = ranking.candidate_seeds(seed + 1, n)",
             (f"{BOT}::test_each_candidate_is_the_ordinary_run_with_its_seed",),
             "a candidate's recorded seed is not the one that made it: a pick does not regenerate"),
    Mutation("personalize-best-of-images-not-reordered", "core/library.py",
             "images, records = ranker(images, list(prompts))", "records = ranker(images, list(prompts))[1]",
             (f"{BOT}::test_order_equals_a_recomputation_from_the_returned_images",),
             "the captions ranked, the images left in batch order"),
    Mutation("personalize-best-of-one-noise-for-all", "core/library.py",
             'kw["latents"] = candidate_latents(engine, kw.get("seed", 0), n, len(prompts), w, h)',
             'kw["latents"] = candidate_latents(engine, kw.get("seed", 0), 1, len(prompts), w, h).repeat(n, 1, 1, 1)',
             (f"{BOT}::test_each_candidate_is_the_ordinary_run_with_its_seed",),
             "N candidates from the same starting noise: N copies of one image"),
]

