"""Evaluation: object expansion, image quality and text alignment, and reports people can read.

- `metrics`: object expansion in the paper's form and the original notebook's, IoU and the lost share.
- `quality`: FID (Inception or CLIP features), CLIP score, LPIPS diversity through torchmetrics.
- `data`: benchmarks (prepared datasets or image/mask folders) and model specs (`tiny-inpainting@scale=0`).
- `runner`: generate (resumable), segment, score.
- `report`: the Markdown table, CSV, bar chart, worst-case grid.

`photobg evaluate` (this module is the CLI command) runs them all.
"""

from .command import add_arguments, run  # noqa: F401  (the CLI command's interface)

HELP = "Evaluate models on a benchmark: object expansion, FID, CLIP score; writes a report with tables and figures."
