"""`photobg app`'s API endpoint, `/generate`: what the page does, for programs (`gradio_client`), with the same
fields, defaults, limits and messages. `photobg.app_page` adds it to the page's Blocks."""

import tempfile
import threading

from .app import API_DESCRIPTION, DEFAULT, canvas_options, check_limits, sampling_options
from .settings import timesteps_text


def api_endpoint(app):
    """`/generate`: photo (+ mask) and settings in, PNGs and their parameters out, for `gradio_client`. The sampling
    fields default to the page's first values (the app's settings)."""
    import gradio as gr

    settings = app.settings
    first_timesteps = timesteps_text(settings.timesteps)

    def generate(
        photo,
        prompt,
        mask=None,
        negative_prompt="",
        num_images=1,
        seed=0,
        steps=settings.num_inference_steps,
        guidance=settings.guidance_scale,
        controlnet_scale=DEFAULT.controlnet_conditioning_scale,
        aspect="",
        size="",
        object_scale=0.0,
        position=DEFAULT.position,
        reference=None,
        ip_adapter_scale=None,
        lora_scale=None,
        timesteps=first_timesteps,
        eta=settings.eta,
    ):
        # A generator that yields the PNGs so far after each image; its folder is removed once Gradio has copied
        # the last. Between yields Gradio checks that the client is still there, and closes this generator when it
        # is not: a request whose client has gone stops after its current image.
        with tempfile.TemporaryDirectory(prefix="photobg-api-") as folder:
            try:
                check_limits(num_images=num_images, steps=steps, guidance=guidance)  # the page's sliders' limits
                selection = app.open(photo, mask)
                if ip_adapter_scale is None:
                    ip_adapter_scale = app.generator.ip_adapter_scale
                options = sampling_options(
                    negative_prompt, steps, guidance, controlnet_scale, lora_scale, reference, ip_adapter_scale,
                    timesteps, eta,
                )  # fmt: skip
                canvas = canvas_options(aspect, size, object_scale, position)
                seed = None if seed is None or seed < 0 else int(seed)
                stop = threading.Event()  # never set: an API call runs to the end, or until its client has gone
                done = []
                for result in app.generate(selection, prompt, num_images, seed, False, options, canvas, folder, stop):
                    done.append(result)
                    yield [each.path for each in done], [each.parameters for each in done]
            except ValueError as err:
                raise gr.Error(str(err)) from None

    with gr.Column(visible=False):
        inputs = [
            gr.File(label="photo"),
            gr.Textbox(label="prompt"),
            gr.File(label="mask"),
            gr.Textbox("", label="negative_prompt"),
            gr.Number(1, label="num_images", precision=0),
            gr.Number(0, label="seed", precision=0),
            gr.Number(settings.num_inference_steps, label="steps", precision=0),
            gr.Number(settings.guidance_scale, label="guidance"),
            gr.Number(DEFAULT.controlnet_conditioning_scale, label="controlnet_scale"),
            gr.Textbox("", label="aspect"),
            gr.Textbox("", label="size"),
            gr.Number(0, label="object_scale"),
            gr.Textbox(DEFAULT.position, label="position"),
            gr.File(label="reference"),
            gr.Number(None, label="ip_adapter_scale"),
            gr.Number(None, label="lora_scale"),
            gr.Textbox(first_timesteps, label="timesteps"),
            gr.Number(settings.eta, label="eta"),
        ]
        outputs = [gr.File(file_count="multiple", label="images"), gr.JSON(label="parameters")]
        trigger = gr.Button(visible=False)
    trigger.click(generate, inputs, outputs, api_name="generate", api_description=API_DESCRIPTION)
