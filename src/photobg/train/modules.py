"""The modules of a training run: the base model's components (frozen, in `weight_dtype`), the ControlNet that
trains (fp32; full-size or compact, `photobg.controlnets`), the checkpoint hooks that save it as a diffusers folder,
and the backbone's photobg pipeline around these very modules (text conditioning in training, validation, the
final save).
"""

import dataclasses
import os
from dataclasses import dataclass

from ..train_config import ConfigError


@dataclass
class Models:
    """The modules of a training run; only `controlnet` trains.

    `backbone` (`photobg.backbones.Backbone`) names the text encoders and tokenizers (SDXL adds `text_encoder_2`
    and `tokenizer_2`); `pipeline_attributes` are the base model's `model_index.json` settings (e.g.
    `force_zeros_for_empty_prompt`); `pipeline` is photobg's pipeline around these very modules, whose
    `encode_conditioning` builds the text conditioning in training as in inference."""

    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object
    controlnet: object
    scheduler_config: dict
    weight_dtype: object
    in_channels: int
    backbone: object
    tokenizer_2: object = None
    text_encoder_2: object = None
    pipeline_attributes: dict = dataclasses.field(default_factory=dict)
    pipeline: object = None

    @classmethod
    def from_pipeline(cls, pipe, weight_dtype=None):
        """The training modules of a loaded photobg pipeline (its own modules, no copies)."""
        from diffusers import DDPMScheduler

        from ..backbones import get_backbone

        backbone = get_backbone(pipe.variant_backbones[pipe.unet.config.in_channels])
        models = cls(
            vae=pipe.vae,
            unet=pipe.unet,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
            controlnet=pipe.controlnet,
            scheduler_config=dict(pipe.scheduler.config),
            weight_dtype=weight_dtype or pipe.unet.dtype,
            in_channels=pipe.unet.config.in_channels,
            backbone=backbone,
            pipeline_attributes=pipeline_settings(pipe.config),
            **{name: getattr(pipe, name) for name in (*backbone.text_encoders, *backbone.tokenizers)},
        )
        models.pipeline = pipe
        return models

    @property
    def frozen(self):
        """The frozen modules: VAE, UNet and the text encoders."""
        return [self.vae, self.unet, *(getattr(self, name) for name in self.backbone.text_encoders)]


def pipeline_settings(model_index):
    """The settings of a `model_index.json` (e.g. `force_zeros_for_empty_prompt`), without its components."""
    return {k: v for k, v in model_index.items() if not k.startswith("_") and not isinstance(v, (list, tuple))}


def load_models(config, accelerator):
    """Load the base model's components (frozen, `weight_dtype`, on the device) and the ControlNet (fp32).

    The backbone, detected from the folder, says which text encoders and tokenizers there are; each text
    encoder's class is the one its `model_index.json` entry names (SDXL's second: `CLIPTextModelWithProjection`)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from ..backbones import detect_backbone
    from ..hub import load_config
    from ..models.specs import resolve_model

    model = resolve_model(config.pretrained_model_name_or_path, "Base model")
    backbone = detect_backbone(model)
    index = load_config(model, None, "Model", filename="model_index.json")
    hub = dict(revision=config.revision, cache_dir=config.cache_dir)
    text = load_text_models(config, model, backbone, index, hub)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", variant=config.variant, **hub)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", variant=config.variant, **hub)
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", **hub)
    scheduler_config = dict(DDPMScheduler.load_config(model, subfolder="scheduler", **hub))
    controlnet = load_controlnet(config, unet)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    models = Models(
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler,
        controlnet=controlnet,
        scheduler_config=scheduler_config,
        weight_dtype=weight_dtype,
        in_channels=unet.config.in_channels,
        backbone=backbone,
        pipeline_attributes=pipeline_settings(index),
        **text,
    )
    prepare_for_training(config, accelerator, models)
    return models


def load_text_models(config, model, backbone, index, hub):
    """{name: tokenizer or text encoder} of the backbone (--tokenizer_name replaces the first tokenizer)."""
    import transformers
    from transformers import AutoTokenizer

    text = {}
    for name in backbone.tokenizers:
        source = dict(pretrained_model_name_or_path=model, subfolder=name)
        if config.tokenizer_name and name == "tokenizer":
            source = dict(pretrained_model_name_or_path=config.tokenizer_name)
        text[name] = AutoTokenizer.from_pretrained(**source, **hub)
    for name in backbone.text_encoders:
        cls = getattr(transformers, index[name][1])
        text[name] = cls.from_pretrained(model, subfolder=name, variant=config.variant, **hub)
    return text


def prepare_for_training(config, accelerator, models):
    """Freeze the frozen modules (on the device, in `weight_dtype`), set the ControlNet training, apply the memory
    flags, register the checkpoint hooks and build `models.pipeline`."""
    import torch

    controlnet, unet, weight_dtype = models.controlnet, models.unet, models.weight_dtype
    for frozen in models.frozen:
        frozen.requires_grad_(False)
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
    controlnet.train()
    if config.gradient_checkpointing:
        # Both, as diffusers' SDXL ControlNet example: the loss reaches the ControlNet through the frozen UNet,
        # whose activations are most of the step's memory.
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
        controlnet.enable_xformers_memory_efficient_attention()
    register_checkpoint_hooks(accelerator)
    models.pipeline = make_pipeline(models, controlnet)
    if models.pipeline.vae_needs_upcast():  # the pipeline's rule: SDXL's VAE overflows in fp16
        models.vae.to(dtype=torch.float32)


def load_controlnet(config, unet):
    """--controlnet_model_name_or_path (folder, a complete model's `controlnet/`, Hub id or state-dict file),
    else a ControlNet of --controlnet_size initialised from the UNet (`photobg.controlnets.make_controlnet`);
    always fp32, with the UNet's input channels. Its `config.json` records its architecture (a compact one
    loads with plain `ControlNetModel.from_pretrained`)."""
    import torch
    from diffusers import ControlNetModel

    from ..controlnets import make_controlnet
    from ..models.specs import resolve_model
    from ..models.state_dict import STATE_DICT_SUFFIXES, controlnet_from_state_dict

    spec = config.controlnet_model_name_or_path
    if spec is None:
        return make_controlnet(unet, config.controlnet_size)
    if os.path.isfile(spec) and spec.endswith(STATE_DICT_SUFFIXES):
        controlnet = controlnet_from_state_dict(spec, dict(unet.config))
    else:
        folder = resolve_model(spec, "ControlNet")
        subfolder = "controlnet" if os.path.isdir(os.path.join(folder, "controlnet")) else None
        controlnet = ControlNetModel.from_pretrained(folder, subfolder=subfolder, cache_dir=config.cache_dir)
    if controlnet.config.in_channels != unet.config.in_channels:
        raise ConfigError(
            f"--controlnet_model_name_or_path {spec!r} takes {controlnet.config.in_channels} input channels but the "
            f"base model's UNet takes {unet.config.in_channels}."
        )
    return controlnet.to(torch.float32)


def register_checkpoint_hooks(accelerator):
    """Checkpoints hold the ControlNet as a diffusers folder (`controlnet/`), like diffusers' example. Under FSDP
    accelerate saves and loads the sharded model itself."""
    from accelerate.utils import DistributedType
    from diffusers import ControlNetModel

    if accelerator.distributed_type == DistributedType.FSDP:
        return

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "controlnet"))
        weights.clear()  # saved above; accelerate must not save them again

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            saved = ControlNetModel.from_pretrained(input_dir, subfolder="controlnet")
            model.load_state_dict(saved.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def make_pipeline(models, controlnet, scheduler=None):
    """The photobg pipeline of the backbone (`photobg.models.pipeline_class`) around the modules being trained (no
    copies), with the base model's `model_index.json` settings and no safety checker."""
    from ..models.loading import make_scheduler
    from ..models.pipelines import pipeline_class, pipeline_from_components

    config = models.scheduler_config
    components = dict(
        vae=models.vae,
        unet=models.unet,
        controlnet=controlnet,
        scheduler=make_scheduler(scheduler or config["_class_name"], config),
        **{name: getattr(models, name) for name in (*models.backbone.text_encoders, *models.backbone.tokenizers)},
    )
    attributes = {**models.pipeline_attributes, "requires_safety_checker": False}
    return pipeline_from_components(pipeline_class(models.backbone), components, attributes)
