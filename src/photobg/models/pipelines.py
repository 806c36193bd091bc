"""photobg's pipeline class for a backbone, and a pipeline put together from modules already built.

`pipeline_class` picks the SD2 or the SDXL pipeline (the same method, `photobg.method`); `pipeline_from_components`
assembles one from its modules without loading anything (the test-model writer, training's validation pipeline,
the benchmarks). Loading one from a model folder is `photobg.models.loading.load_pipeline`.
"""

from ..backbones import TEXT_CLIP


def pipeline_class(backbone):
    """photobg's pipeline class for a `Backbone`: the SD2 or the SDXL one (the same method, `photobg.method`)."""
    if backbone.text_conditioning == TEXT_CLIP:
        from ..pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline

        return StableDiffusionControlNetInpaintPipeline
    from ..pipeline_controlnet_inpaint_sd_xl import StableDiffusionXLControlNetInpaintPipeline

    return StableDiffusionXLControlNetInpaintPipeline


def pipeline_from_components(cls, components, attributes):
    """`cls(**components)` with no safety checker, feature extractor or image encoder, and those of the
    `model_index.json` `attributes` that `cls` takes (e.g. `force_zeros_for_empty_prompt`)."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    absent = {name: None for name in ("safety_checker", "feature_extractor", "image_encoder") if name in accepted}
    return cls(**components, **absent, **{key: value for key, value in attributes.items() if key in accepted})
