"""The base models the method runs on, as data: one registry, and the detection of a model folder's backbone.

The method is the same on every backbone; what changes is the base model's layout. A `Backbone` names the
reference model (Hub id), its native size, its UNet's input channels (9: an inpainting UNet, the inpaint
variant; 4: a text-to-image UNet, the base variant), its text conditioning, the diffusers pipeline class of
its folder layout, and its architecture configs in `photobg.configs` (real size and tiny).

A model is matched to a backbone by its layout, read from `model_index.json` and `unet/config.json`, never
by its name: fine-tunes with the reference model's layout (and SD 1.x folders, laid out like SD2) are that
backbone and run on the same code. This module imports neither torch nor diffusers.
"""

from dataclasses import dataclass

from .hub import load_component_config, load_config

# Text conditioning kinds. "clip": one CLIP text encoder whose last hidden states are the cross-attention
# context. "sdxl": two CLIP text encoders whose penultimate hidden states are concatenated, plus the UNet's
# added conditions (`addition_embed_type="text_time"`): the second encoder's pooled embedding and time ids
# (original size, crop top-left, target size; an aesthetic score instead of the target size where the model
# requires it).
TEXT_CLIP = "clip"
TEXT_SDXL = "sdxl"
TEXT_ENCODERS = {TEXT_CLIP: ("text_encoder",), TEXT_SDXL: ("text_encoder", "text_encoder_2")}
TOKENIZERS = {TEXT_CLIP: ("tokenizer",), TEXT_SDXL: ("tokenizer", "tokenizer_2")}


# The folder layout of a complete model (base model plus `controlnet/`), by text conditioning: the diffusers
# ControlNet-inpaint pipeline of that family, whose name photobg's pipeline class keeps.
CONTROLNET_PIPELINES = {
    TEXT_CLIP: "StableDiffusionControlNetInpaintPipeline",
    TEXT_SDXL: "StableDiffusionXLControlNetInpaintPipeline",
}


@dataclass(frozen=True)
class Backbone:
    """One supported base model.

    Attributes:
        name: registry key, e.g. `sdxl-inpainting`; also the `photobg.configs` key of its real architecture
            (random-weight benchmarks).
        hub_id: the reference model on the Hugging Face Hub.
        native_size: the side in pixels the model was trained at; the default working size.
        unet_in_channels: 9 (inpainting UNet: the inpaint variant) or 4 (text-to-image UNet: the base variant).
        text_conditioning: `TEXT_CLIP` or `TEXT_SDXL`.
        pipeline_class: the diffusers pipeline class of the base model's folder (its `model_index.json`).
        tiny_config: the `photobg.configs` key of the tiny test architecture, also a test model name.
    """

    name: str
    hub_id: str
    native_size: int
    unet_in_channels: int
    text_conditioning: str
    pipeline_class: str
    tiny_config: str

    @property
    def config(self):
        """The `photobg.configs` key of the real architecture."""
        return self.name

    @property
    def controlnet_pipeline_class(self):
        """The class name of a complete model's folder (the base model plus `controlnet/`)."""
        return CONTROLNET_PIPELINES[self.text_conditioning]

    @property
    def variant(self):
        """`inpaint` (the ControlNet takes the UNet's 9 channels) or `base` (4 channels, latent blending)."""
        return "inpaint" if self.unet_in_channels == 9 else "base"

    @property
    def text_encoders(self):
        """The text encoders' component names, in the order the UNet's context concatenates them."""
        return TEXT_ENCODERS[self.text_conditioning]

    @property
    def tokenizers(self):
        """The tokenizers' component names, one per text encoder."""
        return TOKENIZERS[self.text_conditioning]

    def describe(self):
        """One line for messages and tables, e.g. `sdxl-base (4-channel UNet, 1024 px, two text encoders ...)`."""
        text = "one CLIP text encoder" if self.text_conditioning == TEXT_CLIP else "two text encoders + time ids"
        return f"{self.name} ({self.unet_in_channels}-channel UNet, {self.native_size} px, {text})"


# name, Hub id, native size, UNet input channels, text conditioning, diffusers pipeline class, tiny config
BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone("sd2-inpainting", "stabilityai/stable-diffusion-2-inpainting", 512, 9, TEXT_CLIP,
                 "StableDiffusionInpaintPipeline", "tiny-inpainting"),
        Backbone("sd2-base", "stabilityai/stable-diffusion-2-base", 512, 4, TEXT_CLIP,
                 "StableDiffusionPipeline", "tiny-base"),
        Backbone("sdxl-inpainting", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", 1024, 9, TEXT_SDXL,
                 "StableDiffusionXLInpaintPipeline", "tiny-sdxl-inpainting"),
        Backbone("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", 1024, 4, TEXT_SDXL,
                 "StableDiffusionXLPipeline", "tiny-sdxl-base"),
    )
}  # fmt: skip

# Model names that are built locally (random weights, tiny) instead of being downloaded.
TEST_MODELS = tuple(backbone.tiny_config for backbone in BACKBONES.values())


class UnsupportedModelError(ValueError):
    """A model folder whose layout matches no backbone of `BACKBONES`."""


def get_backbone(name):
    """The registered backbone `name`; a `ValueError` lists the choices for any other name."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def backbone_for_config(config_name):
    """The backbone whose real or tiny architecture is the `photobg.configs` entry `config_name`."""
    for backbone in BACKBONES.values():
        if config_name in (backbone.config, backbone.tiny_config):
            return backbone
    raise ValueError(f"No backbone has the model config {config_name!r}.")


def detect_backbone(model):
    """The backbone of a model, read from its `model_index.json` and `unet/config.json`.

    Used by loading (`models.load_pipeline`) and training alike. A complete photobg model (base model plus
    `controlnet/`) is the backbone of its base model.

    Args:
        model: a local model folder in the Hub layout, or a Hub id (its two config files are fetched).

    Returns:
        The matching `Backbone`.

    Raises:
        UnsupportedModelError: the layout matches no backbone; the message says what was found.
        FileNotFoundError / OSError: the folder or a config file is missing, or the Hub id cannot be fetched.
    """
    index = load_config(model, None, "Model", filename="model_index.json")
    if not _present(index, "unet"):
        raise UnsupportedModelError(f"Model {model!r} has no UNet: {_found(index, None)}. {_SUPPORTED}")
    return backbone_from_configs(index, load_component_config(model, "unet"), model)


def backbone_from_configs(model_index, unet_config, model="the model"):
    """The backbone of a model given its `model_index.json` and UNet config as dicts (see `detect_backbone`).

    The text conditioning comes from the text encoders the index lists and the UNet's added conditions
    (`addition_embed_type`); the variant from the UNet's input channels.
    """
    encoders = tuple(name for name in ("text_encoder", "text_encoder_2") if _present(model_index, name))
    added = unet_config.get("addition_embed_type")
    plain_unet = unet_config.get("_class_name", "UNet2DConditionModel") == "UNet2DConditionModel"
    kind = None
    if plain_unet and encoders == TEXT_ENCODERS[TEXT_CLIP] and added is None and not _has_class_embedding(unet_config):
        kind = TEXT_CLIP
    elif plain_unet and encoders == TEXT_ENCODERS[TEXT_SDXL] and added == "text_time":
        kind = TEXT_SDXL
    for backbone in BACKBONES.values():
        if backbone.text_conditioning == kind and backbone.unet_in_channels == unet_config.get("in_channels"):
            return backbone
    raise UnsupportedModelError(
        f"Model {model!r} is not laid out like a supported backbone: {_found(model_index, unet_config)}. {_SUPPORTED}"
    )


_SUPPORTED = "Supported (detected from model_index.json and unet/config.json): " + "; ".join(
    f"{b.describe()}, e.g. {b.hub_id}" for b in BACKBONES.values()
)


def _present(model_index, name):
    # model_index.json lists an absent optional component as [null, null].
    entry = model_index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def _has_class_embedding(unet_config):
    return unet_config.get("class_embed_type") is not None or unet_config.get("num_class_embeds") is not None


def _found(model_index, unet_config):
    """What a model is, in the terms detection uses: its pipeline class, components and UNet settings."""
    components = [name for name in model_index if not name.startswith("_") and _present(model_index, name)]
    found = f"a {model_index.get('_class_name', 'pipeline of unknown class')} with "
    found += ", ".join(components) or "no components"
    if unet_config is not None:
        settings = {
            key: unet_config.get(key)
            for key in ("_class_name", "in_channels", "addition_embed_type", "class_embed_type", "num_class_embeds")
            if unet_config.get(key) is not None
        }
        found += "; its UNet has " + ", ".join(f"{key}={value!r}" for key, value in settings.items())
    return found
