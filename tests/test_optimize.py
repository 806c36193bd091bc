"""Opt-in speed settings keep the images and do not recompile for new prompts or seeds."""

import numpy as np
import torch
from conftest import generator, make_photo

from photobg.models import optimize


def generate(pipe, prompt="a photo of a cat", seed=0):
    photo, object_mask = make_photo(64, 64)
    return pipe(
        prompt, image=photo, object_mask=object_mask, num_inference_steps=2, generator=generator(seed), output_type="np"
    ).images


def test_compiled_pipeline_keeps_images_and_reuses_graphs(pipe):
    reference = [generate(pipe), generate(pipe, "a dog on the beach", seed=3)]
    torch._dynamo.reset()
    optimize(pipe, compile="aot_eager")  # Dynamo's graph capture without Inductor's C++ build time
    # regional compilation: the models stay themselves, each transformer block of both is compiled
    assert not hasattr(pipe.unet, "_orig_mod") and not hasattr(pipe.controlnet, "_orig_mod")
    for model in (pipe.unet, pipe.controlnet):
        blocks = [m for m in model.modules() if type(m).__name__ == "BasicTransformerBlock"]
        assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    np.testing.assert_allclose(generate(pipe), reference[0], atol=1e-5)
    torch.compiler.set_stance("fail_on_recompile")
    try:
        np.testing.assert_allclose(generate(pipe, "a dog on the beach", seed=3), reference[1], atol=1e-5)
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def test_channels_last_and_vae_tiling_keep_images(pipe):
    reference = generate(pipe)
    optimize(pipe, channels_last=True, vae_tiling=True)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_tiling
    np.testing.assert_allclose(generate(pipe), reference, atol=1e-4)
