"""The shared adapter trainer (DreamBooth, StyleDrop and B-LoRA train through it): the loss and
its prior term, min-SNR weights, the noise schedule, LoRA placement and scale, clean-up."""
from . import Mutation

TR = "core/train.py"
T = "tests/test_train.py"
LOSS = f"{T}::test_the_loss_the_optimizer_gets_is_the_papers"
PRIOR_CALL = "[self.prior_prompts[i] for i in pidx], gen, False).mean()"

MUTATIONS = [
    Mutation("train-prior-weight-dropped", TR,
             "loss = loss + float(recipe.prior_weight) * pl", "loss = loss + pl", (LOSS,),
             "lambda not applied to the back-propagated loss (passed the old suite)"),
    Mutation("train-prior-term-zeroed", TR,
             "loss = loss + float(recipe.prior_weight) * pl", "loss = loss + 0.0 * pl", (LOSS,),
             "no prior preservation at all (only the slow experiment noticed)"),
    Mutation("train-prior-with-instance-prompt", TR,
             PRIOR_CALL, "[self.prompts[0] for i in pidx], gen, False).mean()", (LOSS,),
             "class images paired with the instance prompt"),
    Mutation("train-snr-weight-on-prior", TR, PRIOR_CALL, PRIOR_CALL.replace("False", "True"), (LOSS,),
             "min-SNR weighting applied to the prior term too"),
    Mutation("train-target-is-the-clean-latent", TR,
             "            target = noise", "            target = latents", (LOSS,),
             "x0 regressed instead of the noise"),
    Mutation("train-default-noise-schedule", TR,
             "self.noise_scheduler = DDPMScheduler.from_config(engine.pipe.scheduler.config)",
             "self.noise_scheduler = DDPMScheduler()", (LOSS,),
             "noise added with DDPM's linear betas, not the model's scaled-linear schedule"),
    Mutation("train-snr-weight-inverted", TR,
             "w = torch.clamp(snr, max=float(self.cfg.snr_gamma)) / snr",
             "w = snr / torch.clamp(snr, max=float(self.cfg.snr_gamma))",
             (f"{T}::test_min_snr_gamma_weights_and_the_timestep_range",)),
    Mutation("train-timesteps-half-range", TR,
             "t = torch.randint(0, sched.config.num_train_timesteps, ",
             "t = torch.randint(0, sched.config.num_train_timesteps // 2, ",
             (f"{T}::test_min_snr_gamma_weights_and_the_timestep_range",)),
    Mutation("train-lora-without-out-projection", TR,
             'default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])',
             'default_factory=lambda: ["to_q", "to_k", "to_v"])',
             (f"{T}::test_only_adapter_params_train_and_base_is_untouched",)),
    Mutation("train-lora-alpha-doubled", TR,
             "lora_alpha=float(self.alpha or self.rank)", "lora_alpha=float(self.alpha or 2 * self.rank)",
             (f"{T}::test_lora_update_is_b_a_times_the_weight",), "the update scaled by alpha / r = 2"),
    Mutation("train-base-weights-train-too", TR,
             'params = [p for n, p in unet.named_parameters() if f".{self.adapter_name}." in n]',
             "params = list(unet.parameters())",
             (f"{T}::test_only_adapter_params_train_and_base_is_untouched",), "the optimizer gets the whole UNet"),
    Mutation("train-stopped-run-keeps-its-adapter", TR,
             "            if failed:\n                unet.delete_adapters(self.adapter_name)",
             "            if False:\n                unet.delete_adapters(self.adapter_name)",
             (f"{T}::test_text_encoder_lora_removed_on_cancel",)),
    Mutation("dreambooth-class-images-of-the-instance-prompt", "core/dreambooth.py",
             "imgs = photos + (class_images(engine, ctx, cls, missing",
             "imgs = photos + (class_images(engine, ctx, inst, missing",
             (f"{T}::test_class_images_come_from_the_frozen_model",)),
]
