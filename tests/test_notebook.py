"""inference.ipynb runs top to bottom on the tiny model (nbclient), and is stored without outputs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def run_notebook(model):
    """Run inference.ipynb top to bottom on `model` (CPU, 2 steps, threshold segmenter), its parameters
    overridden as papermill injects them.

    Returns:
        (the printed text, the image outputs).
    """
    notebook = nbformat.read(REPO / "inference.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "clear the outputs"
    (parameters,) = [k for k, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    overrides = "\n".join(
        [
            "import torch",
            "torch.set_num_threads(1)",
            f"MODEL = {str(model)!r}",
            "DEVICE = 'cpu'",
            "STEPS = 2",
            "SEGMENTER = 'threshold'",
        ]
    )
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(overrides))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    return printed, images


def test_notebook_runs_on_the_tiny_model_and_reports_expansion_for_both(inpaint_model):
    printed, images = run_notebook(inpaint_model)
    assert "backbone sd2-inpainting" in printed and "object from alpha" in printed
    for name in ("base model alone", "ours"):
        assert f"{name}: object expansion " in printed
    assert len(images) == 3  # the object mask, the two results, the masks found in them
