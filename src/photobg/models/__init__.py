"""Build and load the models behind photobg, one room per topic:

- `loading`: `load_pipeline` (a complete model, or a base model plus a ControlNet given as a Hub id, a folder or a
  state-dict file; the backbone detected from the folder picks the pipeline class), `check_model` (configs alone,
  before any weight loads), devices and dtypes, schedulers, `optimize`.
- `adapters`: `check_vae`, `load_loras` (`parse_lora`: `PATH[:SCALE]`), `load_ip_adapter`: a replacement VAE, LoRAs
  and an IP-Adapter, each checked (files, fit with the model) with errors naming it.
- `state_dict`: single-file ControlNet state dicts, read and converted to a diffusers folder (`convert_controlnet`).
- `pipelines`: photobg's pipeline class for a backbone, and a pipeline assembled from modules already built.
- `specs`: a model option turned into a folder or Hub id (`resolve_model`; test models built on first use).
- `testing`: `build_components` / `write_test_model`, random-weight models from the configs in `photobg.configs`
  in the exact folder layout of a Hub model (tiny ones for tests, real-size ones for benchmarks).

Reading a model's config files without torch is `photobg.hub`. This package re-exports the names callers use
(`from photobg.models import load_pipeline, write_test_model, DTYPES, ...`); photobg's own modules import from the
room that holds a name.
"""

from ..backbones import TEST_MODELS
from ..hub import COMPONENTS, check_hub_file, hub_error, native_size, photobg_cache
from .adapters import (
    LORA_WEIGHT_NAME,
    VAE_SETTINGS,
    WEIGHT_SUFFIXES,
    Lora,
    check_vae,
    ip_adapter_weights,
    load_ip_adapter,
    load_loras,
    lora_shapes,
    parse_lora,
    set_lora_scales,
)
from .loading import (
    DEFAULT_BASE_MODEL,
    DTYPES,
    check_compile,
    check_model,
    check_scheduler,
    check_timesteps,
    free_device_memory,
    load_pipeline,
    make_scheduler,
    optimize,
    resolve_device,
    resolve_dtype,
    scheduler_class,
    scheduler_name,
    scheduler_options,
    scheduler_options_of,
    takes_eta,
    takes_timesteps,
)
from .pipelines import pipeline_class, pipeline_from_components
from .specs import resolve_model
from .state_dict import (
    STATE_DICT_SUFFIXES,
    controlnet_config_from_unet,
    controlnet_from_state_dict,
    convert_controlnet,
    read_controlnet_state_dict,
    unreadable_weights,
)
from .testing import build_components, text_encoder_from_config, write_test_model

__all__ = [
    "COMPONENTS",
    "DEFAULT_BASE_MODEL",
    "DTYPES",
    "LORA_WEIGHT_NAME",
    "STATE_DICT_SUFFIXES",
    "TEST_MODELS",
    "VAE_SETTINGS",
    "WEIGHT_SUFFIXES",
    "Lora",
    "build_components",
    "check_hub_file",
    "check_model",
    "check_compile",
    "check_scheduler",
    "check_timesteps",
    "check_vae",
    "controlnet_config_from_unet",
    "controlnet_from_state_dict",
    "convert_controlnet",
    "free_device_memory",
    "hub_error",
    "ip_adapter_weights",
    "load_ip_adapter",
    "load_loras",
    "load_pipeline",
    "lora_shapes",
    "make_scheduler",
    "native_size",
    "optimize",
    "parse_lora",
    "photobg_cache",
    "pipeline_class",
    "pipeline_from_components",
    "read_controlnet_state_dict",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "scheduler_class",
    "scheduler_name",
    "scheduler_options",
    "scheduler_options_of",
    "set_lora_scales",
    "takes_eta",
    "takes_timesteps",
    "text_encoder_from_config",
    "unreadable_weights",
    "write_test_model",
]
