"""VectorFusion (latent SDS, guidance, timesteps, re-initialisation, the fp32 encoder) and our
differentiable rasterizer (fill rules, winding, coverage, compositing gradients, strokes)."""
from . import Mutation

VF = "core/vectorfusion.py"
R = "core/vector/rasterizer.py"
T = "tests/test_vectorfusion.py"
TR = "tests/test_vector_raster.py"
SDS = f"{T}::test_sds_gradient_is_w_t_times_eps_difference"
REINIT = f"{T}::test_reinitialize_replaces_exactly_the_paths_below_threshold"
FD = f"{TR}::test_gradients_match_finite_differences"
RB = "core/vector/raster_batched.py"
SAME = f"{TR}::test_batched_path_matches_the_loop"      # the loop path, now second to auto

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
    Mutation("rast-fill-rules-swapped", R,
             'return (wind & 1).bool() if rule == "evenodd" else wind != 0',
             'return wind != 0 if rule == "evenodd" else (wind & 1).bool()',
             (SAME, f"{TR}::test_fill_rules_and_opacity_match_cairosvg",)),
    Mutation("rast-winding-unsigned", R,
             "sign = torch.where(be[:, 1] > ae[:, 1], 1, -1)", "sign = torch.where(be[:, 1] > ae[:, 1], 1, 1)",
             (SAME, f"{TR}::test_fill_rules_and_opacity_match_cairosvg",), "crossings counted, not signed"),
    Mutation("rast-sliver-edges-not-combined", R,
             "torch.where(sliver, 1.0, 0.0)", "torch.where(sliver, 0.0, 0.0)",
             (SAME, f"{TR}::test_sliver_thinner_than_a_pixel_has_its_area",)),
    Mutation("rast-corner-coverage-minimum", R,
             "torch.where(convex, fa * fb, fa + fb - fa * fb)", "torch.where(convex, torch.minimum(fa, fb), fa + fb - fa * fb)",
             (SAME, f"{TR}::test_area_coverage_is_exact_along_axis_aligned_edges",)),
    Mutation("rast-box-filter-not-normalised", R,
             "mid = 0.5 + x / a", "mid = 0.5 + x", (f"{TR}::test_area_coverage_is_exact_along_a_slanted_edge",),
             "coverage ramp as if every edge were axis-aligned"),
    Mutation("rast-alpha-gradient-ignores-what-is-below", R,
             "ga[i] = (g * (c[:, None, None] - before[i])).sum(0)", "ga[i] = (g * c[:, None, None]).sum(0)", (SAME, FD,)),
    Mutation("rast-colour-gradient-ignores-alpha", R,
             "gc[i] = (g * a).sum((1, 2))", "gc[i] = g.sum((1, 2))", (SAME, FD,)),
    Mutation("rast-stroke-width-as-half-width", R,
             "half = shape.stroke_width * (0.5 * math.sqrt(sx * sy))", "half = shape.stroke_width * (1.0 * math.sqrt(sx * sy))",
             (SAME, f"{TR}::test_strokes_match_cairosvg_round_joins_all_caps",), "SVG's full width used as diffvg's half width"),
    Mutation("rast-batched-paint-order-reversed", RB,
             "order = torch.argsort(pix * n_layers + layer)", "order = torch.argsort(pix * n_layers - layer)",
             (f"{TR}::test_batched_composite_is_alpha_over_in_paint_order",), "the scan composites bottom-up"),
    Mutation("rast-batched-winding-unsigned", RB,
             "sign = torch.where(be[:, 1] > ae[:, 1], 1, -1).to(torch.int32)",
             "sign = torch.where(be[:, 1] > ae[:, 1], 1, 1).to(torch.int32)",
             (f"{TR}::test_fill_rules_and_opacity_match_cairosvg",), "crossings counted, not signed"),
    Mutation("rast-batched-edge-side-unsigned", RB,
             "sign = torch.where(pb[..., 1] > pa[..., 1], 1, -1)", "sign = torch.where(pb[..., 1] > pa[..., 1], 1, 1)",
             (SAME,), "the filled side of each edge from unsigned crossings"),
    Mutation("rast-batched-scan-one-step-short", RB,
             "while s < depth:", "while 2 * s < depth:",
             (f"{TR}::test_batched_composite_is_alpha_over_in_paint_order",),
             "the top layer misses the transmittance of the bottom"),
    Mutation("rast-batched-transmittance-inclusive", RB,
             "excl = torch.where(idx < last, torch.cat([incl[1:], incl[:1]]), torch.ones_like(incl))",
             "excl = incl",
             (f"{TR}::test_batched_composite_is_alpha_over_in_paint_order",), "each layer attenuated by itself"),
    Mutation("rast-batched-stroke-caps-ignored", RB,
             "cap = torch.where(code > 0, caps[ep], torch.zeros_like(caps[ep]))", "cap = torch.zeros_like(caps[ep])",
             (f"{TR}::test_strokes_match_cairosvg_round_joins_all_caps",), "butt and square caps drawn round"),
]
