"""Random-weight models in the exact folder layout of a Hub model: the tiny test models, and real-size ones.

`build_components` builds a backbone's modules from the architectures of `photobg.configs` (real size for the
benchmarks' true compute cost, tiny for tests); `write_test_model` saves them as a base model's or a complete
photobg model's folder, with a tokenizer whose vocab `write_tokenizer` writes. These are fixture writers, not
runtime code: the loaders import this module only when a test model name (`tiny-inpainting`, ...) is asked for
(`photobg.models.specs.resolve_model`).
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..backbones import backbone_for_config
from ..configs import get_config
from .pipelines import pipeline_class, pipeline_from_components


def build_components(config_name="tiny-inpainting", seed=0, with_controlnet=True):
    """Random-weight models with a registered architecture (see `photobg.configs.MODEL_CONFIGS`).

    The ControlNet is built with `ControlNetModel.from_unet` like in training; its zero-initialised output
    layers then get small random weights so that, unlike a fresh ControlNet, it changes the UNet's output.

    Args:
        config_name: a `photobg.configs` name: a backbone's real architecture or its tiny test version.
        seed: seed of the random weights.
        with_controlnet: also build a ControlNet from the UNet.

    Returns:
        dict with `unet`, `vae`, the text encoders and tokenizers of the backbone (`text_encoder`, `tokenizer`;
        SDXL adds `text_encoder_2`, `tokenizer_2`), `scheduler` and (optionally) `controlnet`.
    """
    import diffusers
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    config = get_config(config_name)
    backbone = backbone_for_config(config_name)
    torch.manual_seed(seed)
    components = {
        "unet": UNet2DConditionModel.from_config(config["unet"]),
        "vae": AutoencoderKL.from_config(config["vae"]),
    }
    for name in backbone.text_encoders:
        components[name] = text_encoder_from_config(config[name])
    scheduler_config = dict(config["scheduler"])
    components["scheduler"] = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    with tempfile.TemporaryDirectory() as folder:
        for name in backbone.tokenizers:
            components[name] = write_tokenizer(Path(folder, name), **config[name])
    if with_controlnet:
        controlnet = ControlNetModel.from_unet(
            components["unet"], conditioning_embedding_out_channels=config["conditioning_channels"]
        )
        zero_initialised = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for layer in [*zero_initialised, controlnet.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(layer.weight, std=0.05)
        components["controlnet"] = controlnet
    return components


def text_encoder_from_config(config):
    """A random-weight text encoder from its Hub `config.json` contents: the class its `architectures` names
    (`CLIPTextModel`, or `CLIPTextModelWithProjection` for SDXL's second encoder)."""
    import transformers

    cls = getattr(transformers, config["architectures"][0])
    return cls(transformers.CLIPTextConfig(**config))


def write_test_model(path, config_name="tiny-inpainting", seed=0, with_controlnet=True):
    """Write random-weight models in the folder layout of a Hub model.

    With `with_controlnet=True` the layout is a complete photobg model's (model_index.json of the backbone's
    ControlNet pipeline plus `controlnet/`); without, it is the base model's (e.g. SD2-inpainting's, or
    SDXL-inpainting's with two tokenizers and text encoders). Each tokenizer folder holds
    `vocab.json`/`merges.txt` written by the factory, like the real models'.

    Args:
        path: the folder to write; replaced if it exists (written next to it first, then moved into place).
        config_name, seed, with_controlnet: as in `build_components`.

    Returns:
        The folder as a `Path`.
    """
    import diffusers

    backbone = backbone_for_config(config_name)
    config = get_config(config_name)
    components = build_components(config_name, seed, with_controlnet)
    # With a ControlNet: ours, which also writes its pipeline files (a complete photobg model's layout).
    cls = pipeline_class(backbone) if with_controlnet else getattr(diffusers, backbone.pipeline_class)
    pipe = pipeline_from_components(cls, components, config["pipeline"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in backbone.tokenizers:
            shutil.rmtree(tmp / name)
            write_tokenizer(tmp / name, **config[name])
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_tokenizer(folder, pad_token="!"):
    """Write a small byte-level BPE CLIP tokenizer (vocab.json, merges.txt, configs) and load it.

    Args:
        folder: where to write it.
        pad_token: `!` like SD2's tokenizer and SDXL's second, `<|endoftext|>` like SDXL's first.

    Returns:
        The `CLIPTokenizer`.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    merges = []
    for word in (
        "a",
        "photo",
        "of",
        "on",
        "the",
        "table",
        "bottle",
        "product",
        "cat",
        "dog",
        "beach",
        "studio",
    ):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    special["pad_token"] = pad_token
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return CLIPTokenizer.from_pretrained(folder)


def _byte_chars():
    # Byte-level BPE alphabet: printable bytes stand for themselves, the rest map to code points from 256.
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars
