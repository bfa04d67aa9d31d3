"""StyleDrop: the adapter (placement, U zero-initialised, D's init) and feedback selection."""
from . import Mutation

SD = "core/styledrop.py"
SDA = "core/styledrop_adapter.py"
T = "tests/test_styledrop.py"
TAB = "tests/test_styledrop_tab.py"
STEP0 = f"{T}::test_adapter_is_the_identity_at_step_0_after_every_feed_forward"
GELU = f"{T}::test_gelu_module_is_x_plus_U_gelu_D_x_by_hand"
HOOKS = f"{T}::test_gelu_adapter_hooks_after_every_feed_forward_and_restores_the_unet"

MUTATIONS = [
    Mutation("styledrop-up-not-zero-initialised", SD,
             'init="gaussian",', "init=False,", (STEP0,),
             "U random at step 0: the adapter is not the identity (passed the old suite)"),
    Mutation("styledrop-down-init-ten-times-wider", SD,
             "std=0.02, a=-0.04, b=0.04", "std=0.2, a=-0.4, b=0.4", (STEP0,)),
    Mutation("styledrop-adapter-after-attention", SD,
             r'TARGETS = r".*transformer_blocks\.\d+\.ff\.net\.2"',
             r'TARGETS = r".*transformer_blocks\.\d+\.attn1\.to_out\.0"', (STEP0,),
             "the adapter after self-attention instead of after the feed-forward"),
    Mutation("styledrop-clip-picks-the-worst", SD,
             "key=lambda x: (-x[0], x[1])", "key=lambda x: (x[0], x[1])",
             (f"{T}::test_clip_picks_by_hand",)),
    Mutation("styledrop-pick-score-weights-swapped", SD,
             'return w * float(scores["clip_text"]) + (1 - w) * float(scores["clip_style"])',
             'return w * float(scores["clip_style"]) + (1 - w) * float(scores["clip_text"])',
             (f"{T}::test_clip_picks_by_hand",)),
    Mutation("styledrop-liked-at-net-zero", SD,
             "liked = store.liked(last.id, owner, min_net=1)", "liked = store.liked(last.id, owner, min_net=0)",
             (f"{T}::test_training_set_is_the_style_image_and_exactly_the_liked_candidates",),
             "round 2 trains on unrated and cancelled-out candidates too"),
    Mutation("styledrop-tile-text-unescaped", "tabs/styledrop.py",
             '"content": html_text(t.content)', '"content": t.content',
             (f"{TAB}::test_tiles_are_small_jpegs_and_the_text_is_escaped",),
             "a visitor's content prompt reaches the grid's template as markup (and as a template literal)"),
    Mutation("styledrop-grid-seed-silently-zero", "tabs/styledrop.py",
             'seed = v.seed(grid_seed, "Grid seed")', "seed = int(grid_seed or 0)",
             (f"{TAB}::test_bad_training_values_are_refused_naming_the_field",),
             "a missing or negative grid seed quietly becomes seed 0"),
    # issue 17: the paper's adapter, adapter guidance (Eq. 4), the paper's CLIP feedback
    Mutation("styledrop-gelu-after-the-up-projection", SDA,
             "        return F.linear(h, self.up)",
             "        return F.gelu(F.linear(F.linear(x.to(self.down.dtype), self.down), self.up), "
             "approximate=GELU_APPROXIMATE)", (GELU,),
             "GELU(U D x) instead of U GELU(D x): the nonlinearity in the wrong place"),
    Mutation("styledrop-gelu-up-not-zero-initialised", SDA,
             "self.up = torch.nn.Parameter(torch.zeros(int(d), int(rank)))",
             "self.up = torch.nn.Parameter(0.02 * torch.randn(int(d), int(rank)))", (GELU, HOOKS),
             "U random at step 0: the fresh adapter is not the identity"),
    Mutation("styledrop-gelu-down-init-ten-times-wider", SDA,
             "std=0.02, a=-0.04, b=0.04", "std=0.2, a=-0.4, b=0.4", (HOOKS,)),
    Mutation("styledrop-eq4-lambdas-swapped", SD,
             "float(lambda_a) * (cond_adapter - cond_base) + float(lambda_b) * (cond_base - uncond_base)",
             "float(lambda_b) * (cond_adapter - cond_base) + float(lambda_a) * (cond_base - uncond_base)",
             (f"{T}::test_eq4_by_hand_and_its_plain_cfg_case",),
             "lambda_A scales the text term and lambda_B the style term"),
    Mutation("styledrop-clip-default-global-top-k", SD,
             "               per_prompt: bool = True) -> list[int]:",
             "               per_prompt: bool = False) -> list[int]:",
             (f"{T}::test_clip_feedback_default_is_the_papers_best_text_score_per_prompt",),
             "the default CLIP feedback picks globally, not the best per prompt as the paper"),
    Mutation("styledrop-eq4-adapter-on-the-negative-half", SD,
             "        return value[n:]", "        return value[:n]",
             (f"{T}::test_adapter_guidance_in_the_denoising_loop",),
             "the adapted pass of Eq. 4 conditioned on the negative prompt instead of the prompt"),
    Mutation("styledrop-subject-style-gamma-swapped", SD,
             "return (1 - g) * eq4(uncond, cond, styled, lambda_a, lambda_b) + g * eq4(",
             "return g * eq4(uncond, cond, styled, lambda_a, lambda_b) + (1 - g) * eq4(",
             (f"{T}::test_subject_and_style_by_mixing_predictions",),
             "gamma weighs the style instead of the subject (Eqs. 5-6)"),
]

# Best of N in the candidate grid (issue 18): core.styledrop.grid_order.
BT = "tests/test_styledrop_best_of.py"
BY_HAND = f"{BT}::test_grid_order_by_hand"
RECOMPUTED = f"{BT}::test_the_grid_order_equals_a_recomputation_from_the_stored_images"
MUTATIONS += [
    Mutation("styledrop-grid-worst-first", SD,
             "out += [(group[r.index], r) for r in ranked]", "out += [(group[r.index], r) for r in reversed(ranked)]",
             (BY_HAND, RECOMPUTED),
             "each prompt's candidates shown worst first"),
    Mutation("styledrop-grid-text-and-style-swapped", SD,
             "preference=p,\n                                     text_weight=1 - p)",
             "preference=1 - p,\n                                     text_weight=p)",
             (BY_HAND, RECOMPUTED),
             "the grid order's preference applied the wrong way round (0 would mean style)"),
    Mutation("styledrop-dino-against-a-candidate", SD,
             "dino = metrics.dino_similarity(imgs, list(style))", "dino = metrics.dino_similarity(imgs, imgs[:1])",
             (RECOMPUTED,),
             "the style measure taken against the first candidate, not the loop's style image"),
    Mutation("styledrop-grid-seed-offset", SD,
             "items += [dict(image=im, prompt=p, seed=seed + j) for j, im in enumerate(imgs)]",
             "items += [dict(image=im, prompt=p, seed=seed + j + 1) for j, im in enumerate(imgs)]",
             (f"{BT}::test_each_candidates_seed_regenerates_it",),
             "a candidate's kept seed does not make it again"),
    Mutation("styledrop-grid-rated-by-position", "tabs/styledrop.py",
             'return {"id": t.id, "src"', 'return {"id": t.position, "src"',
             (f"{BT}::test_the_tab_orders_the_grid_and_ratings_stay_with_their_image",),
             "a tile keyed by its place in the round, so a thumb lands on another candidate"),
]

