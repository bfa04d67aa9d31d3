"""B-LoRA: the two blocks, the LoRA targets in them, halves loaded by block, linear weights,
the zero unconditional branch."""
from . import Mutation

B = "core/blora.py"
T = "tests/test_blora.py"
ORACLE = f"{T}::test_halves_compute_what_their_blocks_merged_by_hand_compute"
X = "core/blora_exchange.py"
XT = "tests/test_blora_exchange.py"

MUTATIONS = [
    Mutation("blora-blocks-swapped", B,
             'CONTENT_BLOCK = "up_blocks.0.attentions.0"\nSTYLE_BLOCK = "up_blocks.0.attentions.1"',
             'CONTENT_BLOCK = "up_blocks.0.attentions.1"\nSTYLE_BLOCK = "up_blocks.0.attentions.0"',
             (ORACLE,), "content in W^5_0 and style in W^4_0 (a swap of the constants passed the old suite)"),
    Mutation("blora-self-attention-only", B,
             r"transformer_blocks\.\d+\.attn[12]\.", r"transformer_blocks\.\d+\.attn1\.",
             (f"{T}::test_only_the_two_blocks_train_and_everything_else_is_bit_identical",),
             "LoRA on the blocks' self-attention only, cross-attention left out"),
    Mutation("blora-weights-squared", B,
             "weights=[float(h.weight) for h in halves] + list(also.values())",
             "weights=[float(h.weight) ** 2 for h in halves] + list(also.values())",
             (ORACLE,), "the reference implementation's alpha-squared scaling"),
    Mutation("blora-half-takes-both-blocks", B,
             'block_of(k) == part)', "block_of(k) is not None)",
             (f"{T}::test_a_half_cannot_land_in_the_other_block",), "a half selected by file, not by block"),
    Mutation("blora-unconditional-zeros-assumed", B,
             'if getattr(pipe.config, "force_zeros_for_empty_prompt", False):', "if True:",
             (f"{T}::test_no_negative_prompt_the_unconditional_branch_is_zero",),
             "an encoded empty negative prompt where the pipeline does not zero it"),
    Mutation("blora-thumbnail-not-the-training-image", B,
             "return str(a.samples[0].file.path) if a.samples else None",
             "return str(a.samples[-1].file.path) if a.samples else None",
             (f"{T}::test_library_entries_carry_labels_and_thumbnails",),
             "the gallery shows a B-LoRA by its last sample, not by the image it learned"),
    Mutation("blora-import-halves-swapped", X,
             "method=blora.METHOD, parts=blora.PARTS,",
             'method=blora.METHOD, parts={"content": blora.PARTS["style"], "style": blora.PARTS["content"]},',
             (f"{XT}::test_a_reference_file_imports_as_a_blora_with_each_half_in_its_block",),
             "a reference file's up_blocks.0.attentions.1 imported as the content half and .0 as the style half"),
    Mutation("blora-export-scale-not-folded", X,
             "(up.double() * (alpha / rank)).to(up.dtype)", "up",
             (f"{XT}::test_our_export_loaded_the_reference_way_gives_our_unet_output",),
             "an export that drops alpha/r: the reference loader (no network alphas) loads another update"),
    Mutation("blora-import-any-blocks", X,
             "accept=check_reference_blocks,", "accept=None,",
             (f"{XT}::test_hostile_files_are_refused_naming_the_problem",),
             "any LoRA file imported as a B-LoRA, whatever blocks it adapts"),
]

# Best of N (issue 18): the ranking (core/ranking.py) and B-LoRA's candidates.
R = "core/ranking.py"
RT = "tests/test_ranking.py"
MUTATIONS += [
    Mutation("blora-rank-preference-swapped", R,
             'weights = {"text": text_weight, "content": 1.0 - preference, "style": preference}',
             'weights = {"text": text_weight, "content": preference, "style": 1.0 - preference}',
             (f"{RT}::test_the_preference_moves_the_order_from_content_to_style",
              f"{RT}::test_rank_orders_by_the_documented_formula"),
             "the content-vs-style preference applied the wrong way round"),
    Mutation("blora-rank-best-last", R,
             "order = sorted(range(len(scores)), key=lambda i: -scores[i])",
             "order = sorted(range(len(scores)), key=lambda i: scores[i])",
             (f"{RT}::test_rank_orders_by_the_documented_formula",
              f"{RT}::test_best_of_n_order_equals_a_recomputation_from_the_returned_images",
              "tests/test_styledrop_best_of.py::test_grid_order_by_hand"),
             "candidates listed worst first"),
    Mutation("blora-rank-not-normalised", R,
             "scores = [s + weights[name] * x for s, x in zip(scores, normalised(values))]",
             "scores = [s + weights[name] * x for s, x in zip(scores, values)]",
             (f"{RT}::test_rank_orders_by_the_documented_formula",),
             "raw cosine similarities summed: a measure with a wide range across the N outweighs the rest"),
    Mutation("blora-rank-content-against-style", R,
             "content = metrics.dino_similarity(list(images), list(content_images)) if content_images else None",
             "content = metrics.dino_similarity(list(images), list(style_images)) if content_images else None",
             (f"{RT}::test_rank_orders_by_the_documented_formula",
              f"{RT}::test_the_preference_moves_the_order_from_content_to_style"),
             "the content measure taken against the style images"),
    Mutation("blora-candidate-seed-off-by-one", R,
             "engine.initial_latents(n_prompts, s, width, height) for s in candidate_seeds(seed, n)",
             "engine.initial_latents(n_prompts, s + 1, width, height) for s in candidate_seeds(seed, n)",
             (f"{RT}::test_candidate_i_of_a_batch_is_the_single_run_with_seed_base_plus_i",
              "tests/test_personalize_best_of.py::test_each_candidate_is_the_ordinary_run_with_its_seed"),
             "a candidate's recorded seed does not regenerate it"),
]
