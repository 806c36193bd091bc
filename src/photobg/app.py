"""`photobg app`: a Gradio web app on the one pipeline (through `BackgroundGenerator`).

Upload a photo (an RGBA cutout, or a photo with an optional mask; else the segmenter finds the object),
type a prompt, and download new backgrounds; optionally next to plain SD2-inpainting (SI2) with the same
seeds. The model is loaded once at start; requests are served one at a time.
"""

from pathlib import Path

HELP = "A web app (Gradio): upload a photo or cutout, type a prompt, download new backgrounds."

ASPECTS = ["photo's own", "1:1", "4:5", "3:4", "2:3", "16:9", "9:16", "3:2", "4:3"]
MAX_IMAGES = 8
# System fonts only: the app must not fetch anything (fonts included) from the internet.
FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def add_arguments(parser):
    from .api import PHOTO_SEGMENTERS
    from .generate_cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--segmenter",
        default="transparent-background",
        choices=PHOTO_SEGMENTERS,
        help="finds the object in photos uploaded without alpha or mask (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=20, help="default denoising steps (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=25, help="largest upload (default: %(default)s MB)")
    parser.add_argument(
        "--max-megapixels", type=float, default=40, help="largest photo, in megapixels (default: %(default)s)"
    )


def run(args):
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .generate_cli import load_generator

    generator = load_generator(args)
    demo = build_app(generator, default_steps=args.steps, max_megapixels=args.max_megapixels)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=f"{args.max_upload_mb:g}mb",
        theme=gr.themes.Default(**FONTS),
        show_error=True,
    )


def build_app(generator, default_steps=20, max_megapixels=40):
    """The Gradio Blocks of the app, serving `generator` (a `BackgroundGenerator`).

    Args:
        generator: the loaded `BackgroundGenerator`.
        default_steps: initial value of the steps slider.
        max_megapixels: photos larger than this are refused with a message.

    Returns:
        `gradio.Blocks`, ready to `.launch()`.
    """
    import gradio as gr

    def show_object(photo, mask, aspect, object_scale, position):
        if photo is None:
            return None, "Upload a photo (or an RGBA cutout) to start."
        prepared = _prepare(generator, photo, mask, aspect, object_scale, position, max_megapixels)
        return _highlight(prepared), _describe(generator, prepared)

    def make_backgrounds(photo, mask, prompt, num_images, seed, compare, *advanced, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        from .api import make_jobs

        negative_prompt, steps, guidance, controlnet_scale, aspect, object_scale, position = advanced
        if photo is None:
            raise gr.Error("Upload a photo (or an RGBA cutout) first.")
        prepared = _prepare(generator, photo, mask, aspect, object_scale, position, max_megapixels)
        jobs = make_jobs([prompt or ""], int(num_images), None if seed is None or seed < 0 else int(seed))
        options = dict(
            negative_prompt=negative_prompt or None,
            num_inference_steps=int(steps),
            guidance_scale=guidance,
            controlnet_conditioning_scale=controlnet_scale,
        )
        runs = [("ours", controlnet_scale)] + ([("SI2", 0.0)] if compare else [])
        results = []
        for job in jobs:
            for name, scale in runs:
                progress((len(results), len(jobs) * len(runs)), desc=f"{name}, seed {job.seed}")
                (image,) = generator.run(prepared, [job], **{**options, "controlnet_conditioning_scale": scale})
                results.append((image, f"{name}, seed {job.seed}"))
        seeds = f"Seed {jobs[0].seed}." if len(jobs) == 1 else f"Seeds {jobs[0].seed}–{jobs[-1].seed}."
        return results, f"{_describe(generator, prepared)} {seeds}"

    # Uploads and results are cached on disk; an hourly sweep removes those older than an hour.
    with gr.Blocks(title="photobg", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# photobg\nA new background around your object, which stays exactly as it is. Upload an RGBA cutout, "
            "or a photo with (optionally) its object mask — white = object; without one, a segmenter finds it."
        )
        with gr.Row():
            with gr.Column():
                photo = gr.File(label="Photo or RGBA cutout", file_types=["image"], elem_id="photo")
                mask = gr.File(label="Object mask (optional, white = object)", file_types=["image"], elem_id="mask")
                preview = gr.Image(label="Object to keep", type="pil", format="png", interactive=False)
                prompt = gr.Textbox(label="Prompt", placeholder="a bottle of perfume on a marble table, soft light")
                with gr.Row():
                    num_images = gr.Slider(
                        1, MAX_IMAGES, value=1, step=1, label="Number of images", elem_id="num-images"
                    )
                    seed = gr.Number(value=0, precision=0, label="Seed (-1: random)")
                compare = gr.Checkbox(label="Compare with plain SD2-inpainting (SI2, ControlNet off)")
                with gr.Accordion("Advanced settings", open=False):
                    negative_prompt = gr.Textbox(label="Negative prompt")
                    steps = gr.Slider(1, 100, value=default_steps, step=1, label="Denoising steps")
                    guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance scale")
                    controlnet_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="ControlNet scale (0 = SI2)")
                    aspect = gr.Dropdown(ASPECTS, value=ASPECTS[0], label="Aspect ratio (the photo is padded to it)")
                    object_scale = gr.Slider(0, 1, value=0, step=0.05, label="Object scale (0 = keep the framing)")
                    position = gr.Dropdown(list(_positions()), value="center", label="Position")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(
                    label="Results", format="png", columns=2, buttons=["download", "fullscreen"], elem_id="results"
                )
                status = gr.Markdown(elem_id="status")
        canvas = [aspect, object_scale, position]
        for trigger in [photo.change, mask.change] + [c.change for c in canvas]:
            trigger(show_object, [photo, mask, *canvas], [preview, status])
        advanced = [negative_prompt, steps, guidance, controlnet_scale, *canvas]
        button.click(make_backgrounds, [photo, mask, prompt, num_images, seed, compare, *advanced], [gallery, status])
    return demo


def _positions():
    from .masks import POSITIONS

    return POSITIONS


def _prepare(generator, photo, mask, aspect, object_scale, position, max_megapixels):
    """`generator.prepare` for uploaded files; every problem becomes a message naming the uploaded file."""
    import gradio as gr
    import PIL.Image

    from .segment import SegmenterUnavailable

    names = {str(p): Path(p).name for p in (photo, mask) if p is not None}
    try:
        with PIL.Image.open(photo) as image:  # reads the header only
            megapixels = image.width * image.height / 1e6
        if megapixels > max_megapixels:
            raise ValueError(f"{photo}: {megapixels:.0f} megapixels; this app takes photos up to {max_megapixels:g}.")
        return generator.prepare(
            photo,
            mask,
            aspect=None if aspect in (None, ASPECTS[0]) else aspect,
            object_scale=object_scale or None,
            position=position,
        )
    except (OSError, ValueError, PIL.Image.DecompressionBombError, SegmenterUnavailable) as err:
        message = str(err)
        if isinstance(err, (OSError, PIL.Image.DecompressionBombError)):
            message = f"{photo}: not a readable image."
        for path, name in names.items():
            message = message.replace(path, name)
        raise gr.Error(message) from None


def _highlight(prepared):
    """The canvas with everything but the object dimmed: what will be kept, at a glance."""
    import PIL.Image

    dimmed = PIL.Image.blend(prepared.image, PIL.Image.new("RGB", prepared.image.size, "white"), 0.7)
    preview = PIL.Image.composite(prepared.image, dimmed, prepared.object_mask)
    preview.thumbnail((768, 768))
    return preview


def _describe(generator, prepared):
    width, height = prepared.image.size
    work_width, work_height = generator.working_size(prepared.image.size)
    source = {"alpha": "its alpha channel", "mask": "the uploaded mask"}.get(prepared.object_source)
    source = source or f"the {prepared.object_source.split(':', 1)[1]} segmenter"
    return f"Object from {source}. Output {width}x{height}, generated at {work_width}x{work_height}."
