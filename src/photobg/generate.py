"""`photobg generate`: new backgrounds around the objects in photos."""

HELP = "Generate new backgrounds around the objects in photos (RGBA cutouts or photo + object mask)."


def add_arguments(parser):
    from .models import DEFAULT_MODEL, DTYPES, TEST_MODELS

    parser.add_argument("images", nargs="+", help="input photos; an RGBA cutout's alpha is its object mask")
    parser.add_argument("--mask", help="object mask file (white = object) for a single input photo")
    parser.add_argument("--prompt", action="append", required=True, help="what to generate (repeatable)")
    parser.add_argument("--negative-prompt", default=None, help="what to avoid")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id or folder of a complete model, or a base model with --controlnet; "
        f"{' / '.join(TEST_MODELS)} build a random test model offline (default: %(default)s)",
    )
    parser.add_argument("--controlnet", help="ControlNet (Hub id, folder or .pth file) for a base --model")
    parser.add_argument("--controlnet-scale", type=float, default=1.0, help="0 = plain SD2-inpainting")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA if present)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: fp16 on CUDA, else fp32)")
    parser.add_argument("--output-dir", default="outputs", help="where results go (default: %(default)s)")


def run(args):
    from pathlib import Path

    import torch

    from .masks import load_image
    from .models import load_pipeline

    if args.mask and len(args.images) > 1:
        raise SystemExit("--mask applies to a single input photo.")
    pipe = load_pipeline(args.model, args.controlnet, device=args.device, dtype=args.dtype)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = load_image(path)
        object_mask = load_image(args.mask) if args.mask else None
        for k, prompt in enumerate(args.prompt):
            generator = torch.Generator("cpu").manual_seed(args.seed)
            result = pipe(
                prompt,
                image=image,
                object_mask=object_mask,
                negative_prompt=args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                controlnet_conditioning_scale=args.controlnet_scale,
                generator=generator,
            ).images[0]
            out = output_dir / f"{Path(path).stem}_p{k}_s{args.seed}.png"
            result.save(out)
            print(f"wrote {out}")
