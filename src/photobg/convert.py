"""`photobg convert`: a single-file ControlNet state dict -> a diffusers ControlNet folder."""

HELP = "Convert a ControlNet saved as one .pth/.safetensors state dict into a diffusers folder."


def add_arguments(parser):
    parser.add_argument("checkpoint", help="state-dict file, e.g. controlnet_inpainting_salient_aware.pth")
    parser.add_argument("--output", required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument(
        "--base",
        default="sd2-inpainting",
        help="architecture of the base UNet: a built-in config (sd2-inpainting, sd2-base, tiny-inpainting, "
        "tiny-base) or a base model folder / Hub id; input channels are read from the weights "
        "(default: %(default)s)",
    )


def run(args):
    from .models.state_dict import convert_controlnet

    try:
        path = convert_controlnet(args.checkpoint, args.output, base=args.base)
    except (OSError, ValueError) as err:  # each names the file or folder it is about
        raise SystemExit(str(err)) from None
    print(f"wrote {path}")
