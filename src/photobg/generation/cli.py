"""`photobg generate`: new backgrounds around the objects in photos, for one photo or a folder of thousands.

This module holds the command's arguments and `run`, which reads like a table of contents: the settings
(`settings.GenerationSettings`, checked before anything loads), the inputs and the plan (`generation.plan`), and
the run itself (`generation.run.GenerationRun`), whose records and keys are `photobg.manifest`'s.
A photo that fails is reported and the batch goes on; a failure that would hit every photo (the output folder
gone, a full disk, a lost device) stops it.

(The package is not called `generate` because `photobg.generate` is the Python API's function.)
"""

HELP = "Generate new backgrounds around the objects in photos (RGBA cutouts, photo + mask, or a segmenter)."

EPILOG = """\
where each photo's object comes from (the first that applies):
  its alpha channel (an RGBA cutout), its mask (--mask FILE, or --masks DIR matched by file stem),
  or a salient-object segmenter (--segmenter).

canvas: by default the output has the photo's size and the object stays where it is. --size WxH or
  --aspect W:H letterbox the photo onto another canvas; --object-scale F instead scales the object's
  bounding box to F of the canvas; --position says where it goes. The background is generated at the
  model's working size (--working-size, default the model's native size, 512 px for SD2) and upscaled;
  the object's own pixels are pasted back at full resolution.

output: DIR/STEM_PROMPT_KEY_sSEED.png per image (e.g. cutout_a-bottle-on-a-beach-at_3f9a1c02_s0.png: the
  prompt's first words and a key of the prompt and settings, so another prompt or setting never overwrites
  earlier images) and DIR/manifest.jsonl, one line per image with every parameter and the `command` that
  regenerates exactly that image (same device and dtype; images made with --batch-size above 1 come back
  equal up to floating-point rounding). --skip-existing keeps an image only if it was made from the same
  photo, mask, prompt, seed, model and settings (also one named STEM_pN_sSEED.png by earlier versions);
  others are generated again.

failures: a photo that cannot be used or fails is reported and skipped, the rest generated, and the exit
  status is 1; a full disk, a vanished output folder or a lost device stop the batch. Ctrl-C stops it too
  (exit status 130). The images written and the manifest stay consistent: rerun with --skip-existing.

many GPUs: accelerate launch --multi_gpu --num_processes N -m photobg generate ... runs one process per GPU,
  each making its share; the files and the manifest are those of one process, and so are the pixels under the
  same thread settings (OMP_NUM_THREADS=1 on a CPU) or on GPUs with deterministic kernels (docs/many-gpus.md).
  photobg launch takes the same arguments and ends as one process does (status 130 on Ctrl-C).

LoRA, VAE, reference image: --lora PATH[:SCALE] (repeatable; a PATH that exists is taken whole, even with ':'),
  --vae (madebyollin/sdxl-vae-fp16-fix for SDXL in fp16), --ip-adapter PATH with --reference-image FILE. A
  few-step LoRA runs with its sampling recipe: --recipe sdxl-lightning-4 (or --scheduler, --scheduler-option,
  --timesteps, --steps, --guidance 0 one by one; docs/recipes.md). All of them are keyed.

examples:
  photobg generate cutout.png --prompt "a bottle on a beach at sunset" --num-images 4
  photobg generate photos/ --masks masks/ --prompts-file prompts.txt --aspect 4:5 --output-dir out/
  photobg generate "shots/*.jpg" --segmenter transparent-background --prompt "studio, soft light" --compare
"""


def add_arguments(parser):
    from ..settings import GROUPS, GenerationSettings

    parser.epilog = EPILOG
    parser.add_argument("images", nargs="+", help="photos: files, folders (their image files) or quoted globs")
    groups = {}
    for name, title in GROUPS.items():  # "model" and "sampling" share one group
        groups[name] = next((g for g in groups.values() if g.title == title), None) or parser.add_argument_group(title)
    groups["object"].add_argument("--mask", help="object mask file (white = object) for a single input photo")
    groups["object"].add_argument("--masks", help="folder of object masks, matched to the photos by file stem")
    GenerationSettings.add_arguments(parser, {"object": groups["object"]})
    groups["prompts"].add_argument("--prompt", action="append", default=[], help="what to generate (repeatable)")
    groups["prompts"].add_argument(
        "--prompts-file", help="more prompts, one per line (blank lines and # comments skipped)"
    )
    GenerationSettings.add_arguments(parser, {name: group for name, group in groups.items() if name != "object"})
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="outputs", help="where results go (default: %(default)s)")
    out.add_argument("--skip-existing", action="store_true", help="keep images already in the output folder")
    out.add_argument("--compare", action="store_true", help="also write STEM_compare_KEY.png: input|mask|SI2|ours")
    out.add_argument("--debug", action="store_true", help="print the traceback of errors and of Ctrl-C")


def run(args):
    """Generate every output of the command; under `accelerate launch` with several processes, this process's
    share of them (see `photobg.distributed`). Returns the exit status, the same on every process: 0, 1 when any
    photo failed or the batch had to stop, 130 when interrupted."""
    from ..distributed import LostProcess, check_shared_folder, current_processes
    from ..manifest import FileHashes
    from ..settings import GenerationSettings, SettingsError
    from .plan import collect_inputs, index_masks, plan_outputs, read_prompts, writable_folder
    from .run import GenerationRun, warnings_as_lines

    prompts = read_prompts(args.prompt, args.prompts_file)
    settings = GenerationSettings.from_args(args)
    try:
        with warnings_as_lines():  # e.g. a recipe without its LoRA: one `warning:` line
            settings.check()
    except SettingsError as err:
        raise SystemExit(str(err)) from None
    inputs = collect_inputs(args.images)
    if args.mask and len(inputs) > 1:
        raise SystemExit("--mask applies to a single input photo; use --masks DIR for many.")
    masks = index_masks(args.masks) if args.masks else {}
    output_dir = writable_folder(args.output_dir)
    processes = current_processes()
    try:
        check_shared_folder(output_dir, processes, "--output-dir")
    except LostProcess as lost:
        raise SystemExit(f"Stopped: {lost}.") from None
    if processes.device and settings.device in (None, "cuda"):
        settings.device = processes.device  # one accelerator per process
    files = FileHashes()
    outputs = plan_outputs(inputs, masks, prompts, settings, output_dir, files, mask=args.mask)
    run = GenerationRun(
        settings, output_dir, processes, files, skip_existing=args.skip_existing, compare=args.compare, debug=args.debug
    )
    return run.run(outputs)
