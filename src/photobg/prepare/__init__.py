"""`photobg prepare`: build a training set (sharded parquet + dataset card) from salient-object datasets,
image/mask folders, COCO and RGBA cutouts, with captions.

Python API: `build_dataset(PrepareConfig(output=..., sources=[SourceSpec(...), ...]))` in `photobg.prepare.build`.
"""

HELP = "Build a training set from salient-object datasets, image/mask folders, COCO or RGBA cutouts, with captions."

EPILOG = """\
sources (any number, mixed in one call; each gets a name for --count/--weight and the `source` column):
  DIR                     a salient-object dataset in its published layout, detected:
                            duts   DUTS-TR-Image/ + DUTS-TR-Mask/ (or DUTS-TE-*, or the root with DUTS-TR/)
                            dis5k  im/ + gt/ (a DIS-* split folder, or the DIS5K root: DIS-TR/)
                            hrsod  HRSOD_train/ + HRSOD_train_mask/ (HRSOD_release/ root)
                            msra   Imgs/ with a.jpg + a.png side by side (MSRA-10K), or a folder of them (MSRA-B)
                            ecssd  images/ + ground_truth_mask/
                            hkuis  imgs/ + gt/
                          a dataset root gives its training split; point at a test split's folder to use it.
                          Named after its layout (duts, dis5k, ...); a second one of a kind gets -2, -3, ...
  --images DIR --masks DIR  any folders, matched by path without extension (source name: images)
  --coco FILE --coco-images DIR [--coco-captions FILE]   COCO instances file + its image folder (name: coco)
  --cutouts DIR           RGBA images whose alpha is the object mask (name: cutouts)

COCO rule: crowd regions are never chosen; candidates are instances covering >= --coco-min-area of the
image; `largest` keeps the largest one, `category` adds the other candidates of its category, `all` keeps
every candidate; images with no candidate or whose chosen instances sum to more than --coco-max-area are
left out. Masks come from polygons or RLE through pycocotools.

captions, in order: the --captions file entry (JSONL or CSV; fields file_name/file/image/path/id and
text/caption/captions; matched by id, relative path, file name, then stem); the COCO captions; the
--caption-model; else empty (counted in the card). One of several is picked by a seeded choice.
Model captions are cached in OUTPUT/.prepare/captions.jsonl, so a re-run does not caption twice.

bad input never stops a run halfway: unreadable images, masks with no object or no background, masks of
another size (resized when the aspect ratio matches within 1%, else left out; --mask-mismatch skip
leaves all out), images without masks, masks without images and duplicate stems are left out and listed
by file in the card and in OUTPUT/.prepare/skipped.jsonl; EXIF rotation, CMYK, grayscale and 16-bit images
and 16-bit, RGB or alpha masks are converted. Bad options, missing or empty folders and a file that is not
COCO stop the run before anything is written.

output: OUTPUT/data/train-XXXXX-of-YYYYY.parquet (appears when all shards are done) + OUTPUT/README.md.
Same options + same files => same dataset. A killed run continues where it stopped when run again with the
same options; other options need --overwrite or another --output.

examples:
  photobg prepare /data/DUTS /data/DIS5K --caption-model Salesforce/blip-image-captioning-large --output train-set
  photobg prepare --images photos/ --masks masks/ --captions captions.jsonl --max-short-side 768 --output products
  photobg prepare /data/DUTS --coco annotations/instances_train2017.json --coco-images train2017 \\
      --coco-captions annotations/captions_train2017.json --count coco=10000 --output mix --num-proc 8
"""


def add_arguments(parser):
    parser.epilog = EPILOG
    sources = parser.add_argument_group("sources")
    sources.add_argument("dirs", nargs="*", metavar="DIR", help="salient-object dataset folders (layout detected)")
    sources.add_argument(
        "--layout",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "DIR"),
        help="a dataset folder in a named layout: duts, dis5k, hrsod, msra, ecssd, hkuis (repeatable)",
    )
    sources.add_argument("--images", action="append", default=[], metavar="DIR", help="image folder (with --masks)")
    sources.add_argument("--masks", action="append", default=[], metavar="DIR", help="mask folder, white = object")
    sources.add_argument("--coco", action="append", default=[], metavar="FILE", help="COCO instances annotation file")
    sources.add_argument("--coco-images", action="append", default=[], metavar="DIR", help="its image folder")
    sources.add_argument("--coco-captions", action="append", default=[], metavar="FILE", help="COCO captions file")
    sources.add_argument(
        "--coco-select",
        choices=("largest", "category", "all"),
        default="largest",
        help="COCO rule (default: %(default)s)",
    )
    sources.add_argument(
        "--coco-min-area",
        type=float,
        default=0.05,
        metavar="F",
        help="candidate area / image area (default: %(default)s)",
    )
    sources.add_argument(
        "--coco-max-area",
        type=float,
        default=0.8,
        metavar="F",
        help="max chosen area / image area (default: %(default)s)",
    )
    sources.add_argument("--cutouts", action="append", default=[], metavar="DIR", help="folder of RGBA cutouts")

    mixing = parser.add_argument_group("mixing")
    mixing.add_argument("--count", action="append", default=[], metavar="NAME=N", help="take N examples of a source")
    mixing.add_argument(
        "--weight", action="append", default=[], metavar="NAME=W", help="take W x a source (<1 subsets, >1 repeats)"
    )
    mixing.add_argument(
        "--seed", type=int, default=0, metavar="N", help="order, subsets and caption choice (default: %(default)s)"
    )

    captions = parser.add_argument_group("captions")
    captions.add_argument("--captions", metavar="FILE", help="captions file (JSONL or CSV)")
    captions.add_argument("--caption-model", metavar="MODEL", help="captioner Hub id or folder (BLIP / BLIP-2 family)")
    captions.add_argument(
        "--caption-prompt", metavar="TEXT", help="text the model's caption continues (BLIP conditional captioning)"
    )
    captions.add_argument(
        "--caption-template",
        default="{caption}",
        metavar="TEXT",
        help="e.g. 'a photo of {caption}'; also {source}, {category}",
    )
    captions.add_argument("--caption-batch-size", type=int, default=16, metavar="N", help="images per captioning batch")
    captions.add_argument(
        "--caption-max-tokens", type=int, default=40, metavar="N", help="caption length limit (tokens)"
    )
    captions.add_argument("--device", metavar="DEVICE", help="captioning device (default: CUDA if present)")
    captions.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="captioner dtype (default: fp16 on CUDA)")

    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, metavar="DIR", help="the training-set folder to write")
    output.add_argument("--max-side", type=int, metavar="N", help="downscale so the long side is at most N pixels")
    output.add_argument("--max-short-side", type=int, metavar="N", help="downscale so the short side is at most N")
    output.add_argument(
        "--mask-mismatch", choices=("resize", "skip"), default="resize", help="a mask of another size (see below)"
    )
    output.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="examples per parquet shard (default: %(default)s)"
    )
    output.add_argument(
        "--num-proc", type=int, default=1, metavar="N", help="worker processes for decoding (default: %(default)s)"
    )
    output.add_argument("--overwrite", action="store_true", help="replace an output prepared with other options")
    output.add_argument("--dry-run", action="store_true", help="list the sources and counts, write nothing")
    output.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def run(args):
    import importlib.util

    missing = [name for name in ("datasets", "pycocotools") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"photobg prepare needs {', '.join(missing)}: pip install 'photobg[prepare]'.")
    from .build import build_dataset, plan_report

    try:
        config = config_from_args(args)
        if args.dry_run:
            print(plan_report(config))
            return 0
        build_dataset(config)
    except ValueError as err:
        raise SystemExit(f"photobg prepare: {err}") from None
    return 0


def config_from_args(args):
    """A `PrepareConfig` from parsed arguments (names sources; checks flag pairings)."""
    from .build import PrepareConfig, SourceSpec
    from .sources import LAYOUT_ALIASES, LAYOUTS, detect_layout

    specs, names = [], {}

    def name(base):
        names[base] = names.get(base, 0) + 1
        return base if names[base] == 1 else f"{base}-{names[base]}"

    layouts = [(None, d) for d in args.dirs] + [(n, d) for n, d in args.layout]
    for layout, folder in layouts:
        layout = LAYOUT_ALIASES.get(layout.lower(), layout.lower()) if layout else detect_layout(folder)
        if layout not in LAYOUTS:
            raise ValueError(f"--layout {layout}: unknown; choose one of: {', '.join(LAYOUTS)}.")
        specs.append(SourceSpec("layout", name(layout), path=str(folder), layout=layout))
    if len(args.images) != len(args.masks):
        raise ValueError("--images and --masks come in pairs (one --masks per --images).")
    specs += [SourceSpec("images", name("images"), images=i, masks=m) for i, m in zip(args.images, args.masks)]
    if len(args.coco) != len(args.coco_images):
        raise ValueError("--coco needs its --coco-images folder (one per --coco).")
    if args.coco_captions and len(args.coco_captions) != len(args.coco):
        raise ValueError("--coco-captions: give one per --coco, or none.")
    coco_captions = args.coco_captions or [None] * len(args.coco)
    for coco, images, captions in zip(args.coco, args.coco_images, coco_captions):
        specs.append(
            SourceSpec(
                "coco",
                name("coco"),
                coco=coco,
                coco_images=images,
                coco_captions=captions,
                coco_mode=args.coco_select,
                coco_min_area=args.coco_min_area,
                coco_max_area=args.coco_max_area,
            )
        )
    specs += [SourceSpec("cutouts", name("cutouts"), path=folder) for folder in args.cutouts]
    return PrepareConfig(
        output=args.output,
        sources=specs,
        seed=args.seed,
        shard_size=args.shard_size,
        counts={k: int(v) for k, v in _pairs(args.count, "--count", int).items()},
        weights=_pairs(args.weight, "--weight", float),
        max_side=args.max_side,
        max_short_side=args.max_short_side,
        mask_mismatch=args.mask_mismatch,
        captions_file=args.captions,
        caption_model=args.caption_model,
        caption_prompt=args.caption_prompt,
        caption_template=args.caption_template,
        caption_max_tokens=args.caption_max_tokens,
        caption_batch_size=args.caption_batch_size,
        device=args.device,
        dtype=args.dtype,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )


def _pairs(values, flag, kind):
    pairs = {}
    for value in values:
        key, sep, number = value.partition("=")
        try:
            pairs[key] = kind(number)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ValueError(f"{flag} {value!r}: expected NAME={'N' if kind is int else 'W'}, e.g. duts=500.")
    return pairs
