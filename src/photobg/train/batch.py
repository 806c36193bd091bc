"""One batch of training: its encoding, its text conditioning and its loss, and the latent cache that stores the
encoding once (`--cache_latents`).

The ControlNet's inputs are built with the method's convention functions (`photobg.method`) and the text
conditioning with the backbone pipeline's own `encode_conditioning`, so that training and inference agree by
construction.
"""

import json
from pathlib import Path


def training_loss(models, controlnet, batch, generator, accelerator=None, noise=None, timesteps=None):
    """The loss of one batch: noise the latents, run ControlNet + UNet on the pipeline's inputs, MSE against the
    noise (epsilon) or the velocity (v_prediction), as the scheduler's config says.

    `noise` and `timesteps` are drawn from `generator` unless given (tests pass them to compare with the pipeline).
    """
    import torch
    import torch.nn.functional as F

    from ..conventions import unet_input

    inputs = encode_batch(models, batch, generator)
    latents, scheduler = inputs["latents"], models.noise_scheduler
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
        )
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    model_input = unet_input(noisy_latents, inputs["mask"], inputs["masked_image_latents"])  # (B, 9 or 4, h, w)
    down_residuals, mid_residual = controlnet(
        model_input,
        timesteps,
        **inputs["conditioning"],
        controlnet_cond=inputs["control_image"],
        return_dict=False,
    )
    dtype = models.weight_dtype
    prediction = models.unet(
        model_input,
        timesteps,
        **inputs["conditioning"],
        down_block_additional_residuals=[r.to(dtype) for r in down_residuals],
        mid_block_additional_residual=mid_residual.to(dtype),
        return_dict=False,
    )[0]
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r} in the base model's scheduler config.")
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def encode_batch(models, batch, generator=None):
    """A batch -> the diffusion inputs, built with the pipeline's convention functions.

    Returns:
        dict: `latents` (B, 4, h, w) scaled, `mask` (B, 1, h, w) latent-size inpaint mask (None for the base
        variant), `masked_image_latents` (B, 4, h, w) (None for the base variant), `control_image`
        (B, 3, H, W) in [0, 1], `conditioning` (`text_conditioning`'s dict: the ControlNet's and UNet's
        `encoder_hidden_states` and `added_cond_kwargs`).
    """
    import torch
    import torch.nn.functional as F
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from ..conventions import inpaint_mask_from_object, make_control_image
    from ..data import uint8_to_pixels

    # The VAE may run in float32 where the frozen models are in half precision (`load_models`: SDXL's VAE).
    vae, dtype, device = models.vae, models.weight_dtype, models.vae.device
    scale = vae.config.scaling_factor
    with torch.no_grad():
        if "latent_params" in batch:  # --cache_latents
            object_mask = batch["mask_uint8"].to(device, torch.float32) / 255.0
            pixel_values = uint8_to_pixels(batch["pixels_uint8"]).to(device) if "pixels_uint8" in batch else None
            latent_dist = DiagonalGaussianDistribution(batch["latent_params"].to(device, vae.dtype))
        else:
            object_mask = batch["object_mask"].to(device)
            pixel_values = batch["pixel_values"].to(device)
            latent_dist = vae.encode(pixel_values.to(vae.dtype)).latent_dist
        latents = (latent_dist.sample(generator) * scale).to(dtype)  # (B, 4, h, w)
        inpaint_mask = inpaint_mask_from_object(object_mask)  # (B, 1, H, W), 1 = generate, binary (the UNet's)
        control_image = make_control_image(pixel_values, 1 - object_mask, models.in_channels)  # (B, 3, H, W), soft
        mask = masked_image_latents = None
        if models.in_channels == 9:
            # As diffusers' prepare_mask_latents: nearest resize of the binary mask to the latent size.
            mask = F.interpolate(inpaint_mask, size=latents.shape[-2:]).to(dtype)
            if "masked_latent_params" in batch:
                masked_dist = DiagonalGaussianDistribution(batch["masked_latent_params"].to(device, vae.dtype))
            else:
                masked_dist = vae.encode((pixel_values * (inpaint_mask < 0.5)).to(vae.dtype)).latent_dist
            masked_image_latents = (masked_dist.sample(generator) * scale).to(dtype)
        conditioning = text_conditioning(models, batch, control_image.shape[-2:], device)
    return {
        "latents": latents,
        "mask": mask,
        "masked_image_latents": masked_image_latents,
        "control_image": control_image.to(dtype),
        "conditioning": conditioning,
    }


# What a batch may carry instead of captions (cached embeddings), under the names of `encode_conditioning`.
CACHED_TEXT = ("prompt_embeds", "pooled_prompt_embeds")


def text_conditioning(models, batch, size, device):
    """The ControlNet's and the UNet's text conditioning of a batch: `encoder_hidden_states` and
    `added_cond_kwargs` (None on SD2), built by the pipeline's own `encode_conditioning` (the function inference
    calls; once per group of examples that share their micro-conditioning), so that training conditions exactly
    as inference does:

    - a caption "" (dropped by --proportion_empty_prompts, or missing) is inference's unconditional input, the
      classifier-free-guidance negative of `negative_prompt=None`: zero embeddings where the model sets
      `force_zeros_for_empty_prompt` (SDXL), the encoded "" otherwise (SD2);
    - SDXL's time ids: the example's original size and crop corner (`batch["crop"]`, see `data.Crop`), target
      size = the training size;
    - cached embeddings (`CACHED_TEXT` keys of the batch) stand for the captions.

    Args:
        models: the run's `Models`.
        batch: a collated batch: `captions` and `crop`, or cached embeddings and `crop`.
        size: (height, width) of the training images.
        device: where the conditioning goes.

    Returns:
        dict(encoder_hidden_states=(B, 77, D), added_cond_kwargs=None or {"text_embeds", "time_ids"}).
    """
    import inspect

    import torch

    pipe = models.pipeline
    accepted = inspect.signature(pipe.encode_conditioning).parameters
    height, width = (int(s) for s in size)
    order, parts = [], []
    for (unconditional, micro), members in _groups(batch, accepted, height, width).items():
        cached = {key: batch[key][members].to(device, models.weight_dtype) for key in CACHED_TEXT if key in batch}
        prompt_kwargs = dict(
            prompt=None if cached else [batch["captions"][k] for k in members],
            negative_prompt=None,
            prompt_embeds=cached.get("prompt_embeds"),
            negative_prompt_embeds=None,
            num_images_per_prompt=1,
            device=device,
            do_classifier_free_guidance=unconditional,
            lora_scale=None,
            clip_skip=None,
        )
        if "pooled_prompt_embeds" in cached:
            micro += (("pooled_prompt_embeds", cached["pooled_prompt_embeds"]),)
        conditioning = pipe.encode_conditioning(prompt_kwargs, height, width, **dict(micro))
        # The guidance batch is [negatives; positives]: unconditional examples are its negative half.
        pick = _negative_half if unconditional else _whole
        parts.append(_join([conditioning.for_controlnet()], pick))
        order += members
    inverse = torch.argsort(torch.tensor(order))
    return _join(parts, lambda tensors: torch.cat(tensors)[inverse.to(tensors[0].device)])


def _groups(batch, accepted, height, width):
    """{(unconditional, micro-conditioning): [example index]}: examples that share the micro-conditioning the
    backbone takes (`accepted`: all of them share it on SD2) and whether they are unconditional are encoded in
    one call."""
    groups = {}
    for k, caption in enumerate(batch["captions"]):
        original_height, original_width, top, left = (int(v) for v in batch["crop"][k])
        micro = dict(
            original_size=(original_height, original_width),
            crops_coords_top_left=(top, left),
            target_size=(height, width),
        )
        micro = tuple((key, value) for key, value in micro.items() if key in accepted)
        groups.setdefault((not _cached(batch) and caption == "", micro), []).append(k)
    return groups


def _negative_half(tensors):
    return tensors[0].chunk(2)[0]


def _whole(tensors):
    return tensors[0]


def _cached(batch):
    return any(key in batch for key in CACHED_TEXT)


def _join(rows, function):
    """`for_controlnet()`-style dicts -> one, each tensor (also inside `added_cond_kwargs`) being `function` of
    the list of the rows' tensors."""
    added = rows[0]["added_cond_kwargs"]
    return {
        "encoder_hidden_states": function([row["encoder_hidden_states"] for row in rows]),
        "added_cond_kwargs": {key: function([row["added_cond_kwargs"][key] for row in rows]) for key in added}
        if added
        else None,
    }


def cache_latents(config, examples, models, accelerator):
    """Encode every example once (see `photobg.data.CachedExamples`); each process encodes its share."""
    import hashlib

    from ..data import CachedExamples, Collate

    key = json.dumps(
        [
            config.pretrained_model_name_or_path,
            config.revision,
            config.variant,
            config.resolution,
            examples.resize_short_side,
            config.center_crop,
            config.random_flip,
            examples.seed,
            examples.dataset._fingerprint,
            str(models.weight_dtype),
        ]
    )
    folder = Path(config.output_dir, "latent_cache", hashlib.sha256(key.encode()).hexdigest()[:16])
    fixed_prompts = config.proportion_empty_prompts == 0 and _captions_are_strings(examples)
    return CachedExamples.build(
        examples,
        folder,
        encode=lambda batch: encode_for_cache(models, batch, fixed_prompts, accelerator.device),
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
        batch_size=config.train_batch_size,
        collate=Collate(),
        fixed_prompts=fixed_prompts,
        num_workers=config.dataloader_num_workers,
    )


def _captions_are_strings(examples):
    feature = examples.dataset.features[examples.caption_column]
    return getattr(feature, "dtype", None) in ("string", "large_string")


def encode_for_cache(models, batch, fixed_prompts, device):
    """What `--cache_latents` stores per example: the VAE's latent distributions (sampled anew each step),
    the object mask (uint8), the photo (uint8, base variant: its control image needs the pixels), the crop
    (SDXL's time ids) and, with fixed prompts, the text embeddings (`text_conditioning`'s, without time ids:
    `prompt_embeds`, and SDXL's `pooled_prompt_embeds`)."""
    import torch

    from ..conventions import inpaint_mask_from_object

    with torch.no_grad():
        pixel_values = batch["pixel_values"].to(device, models.vae.dtype)
        cached = {"latent_params": models.vae.encode(pixel_values).latent_dist.parameters, "crop": batch["crop"]}
        if models.in_channels == 9:
            inpaint_mask = inpaint_mask_from_object(batch["object_mask"]).to(device, models.vae.dtype)
            masked_image = pixel_values * (inpaint_mask < 0.5)
            cached["masked_latent_params"] = models.vae.encode(masked_image).latent_dist.parameters
        else:
            cached["pixels_uint8"] = ((batch["pixel_values"] + 1) * 127.5).round().to(torch.uint8)
        cached["mask_uint8"] = (batch["object_mask"] * 255).round().to(torch.uint8)
        if fixed_prompts:
            conditioning = text_conditioning(models, batch, pixel_values.shape[-2:], device)
            cached["prompt_embeds"] = conditioning["encoder_hidden_states"]
            if conditioning["added_cond_kwargs"]:
                cached["pooled_prompt_embeds"] = conditioning["added_cond_kwargs"]["text_embeds"]
    return {k: v.cpu() for k, v in cached.items()}
