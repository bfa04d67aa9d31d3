"""VectorFusion (latent SDS, guidance, timesteps, re-initialisation, the fp32 encoder) and our
differentiable rasterizer (fill rules, winding, coverage, compositing gradients, strokes)."""
from . import Mutation

VF = "core/vectorfusion.py"
LIVE = "core/vector/live.py"
R = "core/vector/rasterizer.py"
T = "tests/test_vectorfusion.py"
TR = "tests/test_vector_raster.py"
TV = "tests/test_vector_vectorize.py"
XING = f"{TV}::test_xing_loss_is_lives_formula_scaled_by_1e3_and_averaged_over_paths"
SDS = f"{T}::test_sds_gradient_is_w_t_times_eps_difference"
REINIT = f"{T}::test_reinitialize_replaces_exactly_the_paths_below_threshold"
FD = f"{TR}::test_gradients_match_finite_differences"

MUTATIONS = [
    Mutation("vf-guidance-halves-swapped", VF,
             "eps_u, eps_c = eps.chunk(2)", "eps_c, eps_u = eps.chunk(2)", (SDS,),
             "guidance pushes away from the prompt (passed the old suite)"),
    Mutation("vf-cfg-batch-built-the-other-way", VF,
             'encoder_hidden_states=torch.cat([npe, pe]).to(e.dtype),\n'
             '                        added_cond_kwargs={"text_embeds": torch.cat([npooled, pooled])',
             'encoder_hidden_states=torch.cat([pe, npe]).to(e.dtype),\n'
             '                        added_cond_kwargs={"text_embeds": torch.cat([pooled, npooled])', (SDS,),
             "the batch built [cond, uncond] and read [uncond, cond]"),
    Mutation("vf-sds-weight-alpha-bar", VF,
             "(1 - a) * (eps_hat - noise)", "a * (eps_hat - noise)", (SDS,), "w(t) = abar_t instead of 1 - abar_t"),
    Mutation("vf-sds-sign-flipped", VF,
             "(1 - a) * (eps_hat - noise)", "(1 - a) * (noise - eps_hat)", (SDS,)),
    Mutation("vf-noised-with-the-variance", VF,
             "zt = a.sqrt() * z.detach() + (1 - a).sqrt() * noise", "zt = a.sqrt() * z.detach() + (1 - a) * noise",
             (SDS,)),
    Mutation("vf-timesteps-up-to-999", VF,
             "self.t_hi = min(T - 1, int(round(t_range[1] * T)))", "self.t_hi = T - 1",
             (f"{T}::test_sds_timesteps_are_uniform_on_50_to_950",)),
    Mutation("vf-reinit-needs-both-conditions", VF,
             ">= alpha_threshold and path_area(s) >= area_threshold", ">= alpha_threshold or path_area(s) >= area_threshold",
             (REINIT,), "a path is re-initialised only when transparent *and* tiny"),
    Mutation("vf-reinit-area-scaled-linearly", VF,
             "64.0 * (size / PAPER_RENDER) ** 2", "64.0 * (size / PAPER_RENDER)",
             (f"{T}::test_reinitialize_default_threshold_is_64_px_at_600_scaled_by_area",)),
    Mutation("vf-encoder-input-not-in-minus-one-one", VF,
             "h = self.encoder((2 * x - 1).float())", "h = self.encoder(x.float())",
             (f"{T}::test_fp32_encoder_matches_the_vae_and_never_changes_it",)),
    Mutation("live-xing-unscaled", LIVE,
             "(D * torch.relu(-s13) + (1 - D) * torch.relu(s13)).mean(-1) * scale)",
             "(D * torch.relu(-s13) + (1 - D) * torch.relu(s13)).mean(-1))", (XING,),
             "the xing loss without LIVE's 1e-3 scale: 1000x too strong (the old behaviour)"),
    Mutation("live-xing-scale-one", LIVE, "XING_SCALE = 1e-3 ", "XING_SCALE = 1.0 ", (XING,)),
    Mutation("live-xing-turn-test-flipped", LIVE,
             "D = (sin(u, m) >= 0).to(seg.dtype)", "D = (sin(u, m) < 0).to(seg.dtype)", (XING,),
             "penalises the consistent turn instead of the crossing"),
    Mutation("live-per-stage-budget-split", LIVE,
             "return [max(1, int(steps_per_stage))] * stages",
             "return [max(1, int(steps_per_stage) // stages)] * stages",
             (f"{TV}::test_live_runs_steps_per_stage_when_asked",),
             "LIVE's 500 steps per stage read as a total budget (the old ~70 per stage)"),
    Mutation("vf-one-suffix-for-every-style", VF,
             "suffix = SUFFIXES[style]", "suffix = SUFFIX", (f"{T}::test_each_style_has_its_own_prompt_suffix",),
             "the iconographic suffix for pixel art and sketch too (the old behaviour)"),
    Mutation("vf-sds-prompt-without-the-style", VF,
             "full_prompt(prompt, o.style), ctx)", "full_prompt(prompt), ctx)",
             (f"{T}::test_the_model_sees_the_styles_suffix",)),
    Mutation("vf-baseline-sampled-without-the-style", VF,
             "[full_prompt(caption, o.style)] * int(k)", "[full_prompt(caption)] * int(k)",
             (f"{T}::test_the_model_sees_the_styles_suffix",)),
    Mutation("vf-paper-preset-runs-500-sds-steps", VF,
             "    sds_steps: int = 1000\n", "    sds_steps: int = 500\n",
             (f"{T}::test_presets_paper_by_default_and_fast",)),
    Mutation("vf-preset-live-budget-ignored", VF,
             "live_settings = st.live if live_steps is None else",
             "live_settings = LiveSettings.fast() if live_steps is None else",
             (f"{T}::test_a_preset_sets_every_budget_it_is_not_given",),
             "the preset's LIVE budget (steps per stage) never reaches LIVE"),
    Mutation("rast-fill-rules-swapped", R,
             'return (wind & 1).bool() if rule == "evenodd" else wind != 0',
             'return wind != 0 if rule == "evenodd" else (wind & 1).bool()',
             (f"{TR}::test_fill_rules_and_opacity_match_cairosvg",)),
    Mutation("rast-winding-unsigned", R,
             "sign = torch.where(be[:, 1] > ae[:, 1], 1, -1)", "sign = torch.where(be[:, 1] > ae[:, 1], 1, 1)",
             (f"{TR}::test_fill_rules_and_opacity_match_cairosvg",), "crossings counted, not signed"),
    Mutation("rast-sliver-edges-not-combined", R,
             "torch.where(sliver, 1.0, 0.0)", "torch.where(sliver, 0.0, 0.0)",
             (f"{TR}::test_sliver_thinner_than_a_pixel_has_its_area",)),
    Mutation("rast-corner-coverage-minimum", R,
             "torch.where(convex, fa * fb, fa + fb - fa * fb)", "torch.where(convex, torch.minimum(fa, fb), fa + fb - fa * fb)",
             (f"{TR}::test_area_coverage_is_exact_along_axis_aligned_edges",)),
    Mutation("rast-box-filter-not-normalised", R,
             "mid = 0.5 + x / a", "mid = 0.5 + x", (f"{TR}::test_area_coverage_is_exact_along_a_slanted_edge",),
             "coverage ramp as if every edge were axis-aligned"),
    Mutation("rast-alpha-gradient-ignores-what-is-below", R,
             "ga[i] = (g * (c[:, None, None] - before[i])).sum(0)", "ga[i] = (g * c[:, None, None]).sum(0)", (FD,)),
    Mutation("rast-colour-gradient-ignores-alpha", R,
             "gc[i] = (g * a).sum((1, 2))", "gc[i] = g.sum((1, 2))", (FD,)),
    Mutation("rast-stroke-width-as-half-width", R,
             "half = shape.stroke_width * (0.5 * math.sqrt(sx * sy))", "half = shape.stroke_width * (1.0 * math.sqrt(sx * sy))",
             (f"{TR}::test_strokes_match_cairosvg_round_joins_all_caps",), "SVG's full width used as diffvg's half width"),
]
