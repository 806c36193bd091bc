"""Image quality and text alignment of generated images: FID, CLIP score and LPIPS diversity (torchmetrics).

- FID compares the distribution of generated images with reference images in a feature space: Inception-v3
  (the standard FID; needs `torch-fidelity`, which needs torchvision, and downloads its weights once) or CLIP's
  image embeddings (no extra package; the "FID_CLIP" variant of Kynkäänniemi et al., 2023), or any
  `torch.nn.Module` mapping uint8 (B, 3, H, W) images to (B, D) features.
- CLIP score: 100 × cosine(CLIP image embedding, CLIP text embedding), clamped at 0 (torchmetrics' CLIPScore).
- LPIPS diversity: the mean LPIPS distance between images generated for the same input with different seeds.

Every constructor here fails with `QualityMetricUnavailable` naming the metric and how to get it running, so a
long evaluation can check its metrics before it generates anything.
"""

import itertools
import math

import numpy as np
import torch

from ..defaults import DEFAULT_CLIP_MODEL, FID_FEATURES


class QualityMetricUnavailable(RuntimeError):
    """A metric's package or weights are missing; the message says how to get them or what else to use."""


def image_tensor(image):
    """A PIL image as a uint8 (1, 3, H, W) tensor, the input torchmetrics' image metrics take."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


# ----------------------------------------------------------------------------- CLIP


class ClipFeatures(torch.nn.Module):
    """A `CLIPModel` whose `get_image_features`/`get_text_features` return the projected embeddings as tensors.

    torchmetrics' CLIPScore (1.9) expects tensors, but transformers 5 returns a model output whose
    `pooler_output` holds them (torchmetrics issue #3407); this adapter bridges the two.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values):
        return _as_tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return _as_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _as_tensor(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(model=DEFAULT_CLIP_MODEL, device=None):
    """Load a CLIP model and its processor for CLIP score and CLIP-feature FID.

    Args:
        model: Hub id or local folder with a `CLIPModel` and a `CLIPProcessor` (`save_pretrained` layout).
        device: torch device; default CPU (torchmetrics moves the model to the images' device).

    Returns:
        (ClipFeatures, CLIPProcessor).
    """
    from transformers import CLIPModel, CLIPProcessor

    try:
        clip = CLIPModel.from_pretrained(model).eval()
        processor = CLIPProcessor.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise QualityMetricUnavailable(
            f"CLIP score / CLIP features could not load the CLIP model {model!r} ({err.__class__.__name__}). Pass a "
            "local folder (CLIPModel + CLIPProcessor saved with save_pretrained) as --clip-model, run where the Hub "
            "is reachable, or leave clip out of --metrics (and use --fid-features inception)."
        ) from err
    return ClipFeatures(clip).to(device or "cpu"), processor


class ClipImageFeatures(torch.nn.Module):
    """CLIP image embeddings as an FID feature extractor: uint8 (B, 3, H, W) -> (B, projection_dim)."""

    def __init__(self, clip, processor):
        super().__init__()
        self.clip = clip
        self.processor = processor
        self.num_features = clip.config.projection_dim  # read by torchmetrics' FID

    def forward(self, images):
        pixel_values = self.processor(images=[image.cpu() for image in images], return_tensors="pt")["pixel_values"]
        device = next(self.clip.parameters()).device
        return self.clip.get_image_features(pixel_values.to(device)).float()


def make_clip_score(clip):
    """torchmetrics' CLIPScore on an already loaded `(ClipFeatures, CLIPProcessor)` pair."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=lambda: clip)


@torch.no_grad()
def clip_scores(metric, images, prompts):
    """CLIP score of images against their prompts.

    Args:
        metric: a CLIPScore from `make_clip_score` (reset here).
        images: PIL images.
        prompts: one string per image.

    Returns:
        (the set's CLIP score, list of per-image scores).
    """
    metric.reset()
    # torchmetrics moves the CLIP model to the images' device: send the images to where the model is.
    device = next(iter(metric.model.parameters()), torch.empty(0)).device
    pairs = zip(images, prompts, strict=True)
    per_image = [float(metric(image_tensor(image)[0].to(device), prompt)) for image, prompt in pairs]
    return float(metric.compute()), per_image


# ----------------------------------------------------------------------------- FID


def make_fid(features="inception", clip=None):
    """torchmetrics' FrechetInceptionDistance with the chosen features; its reference features survive `reset()`.

    Args:
        features: "inception", "clip" (needs `clip`), or a `torch.nn.Module` mapping uint8 (B, 3, H, W) images to
            (B, D) features (with a `num_features` attribute, or torchmetrics probes it).
        clip: `(ClipFeatures, CLIPProcessor)` from `load_clip`, for `features="clip"`.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(features, torch.nn.Module):
        return FrechetInceptionDistance(feature=features, reset_real_features=False)
    if features == "clip":
        if clip is None:
            raise ValueError("CLIP-feature FID needs a loaded CLIP model (clip=load_clip(...)).")
        return FrechetInceptionDistance(feature=ClipImageFeatures(*clip), reset_real_features=False)
    if features != "inception":
        raise ValueError(f"Unknown FID features {features!r}; choose one of: {', '.join(FID_FEATURES)}.")
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception comes from it)

        return FrechetInceptionDistance(feature=2048, reset_real_features=False)
    except Exception as err:  # ImportError, or a failed weights download
        raise QualityMetricUnavailable(
            f"FID with Inception features is unavailable ({err.__class__.__name__}: {err}). It needs "
            "`pip install torch-fidelity` (with the torchvision build matching your torch) and downloads the "
            "Inception weights on first use. Or use --fid-features clip, or leave fid out of --metrics."
        ) from err


class FidScorer:
    """FID of several sets of generated images against one reference set, whose features are computed once."""

    def __init__(self, metric, device=None):
        self.metric = metric.to(device or "cpu")
        self.device = device or "cpu"

    @torch.no_grad()
    def add_reference(self, images):
        """Add reference (real) images, PIL."""
        for image in images:
            self.metric.update(image_tensor(image).to(self.device), real=True)

    @torch.no_grad()
    def score(self, images):
        """FID of `images` (PIL) against the reference images; NaN when either set has fewer than 2 images. Under
        several processes each passes its share of both sets."""
        self.metric.reset()
        for image in images:
            self.metric.update(image_tensor(image).to(self.device), real=False)
        try:  # with several processes, torchmetrics adds up their statistics here (every process calls it)
            return float(self.metric.compute())
        except RuntimeError as err:
            if "More than one sample" in str(err):  # torchmetrics' check of the counts of all processes
                return math.nan
            raise


# ----------------------------------------------------------------------------- LPIPS diversity


def make_lpips(net="alex", device=None):
    """An LPIPS distance function `distance(image_a, image_b) -> float` on PIL images of one size."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).to(device or "cpu")
    except Exception as err:  # ImportError (torchvision), or a failed weights download
        raise QualityMetricUnavailable(
            f"LPIPS is unavailable ({err.__class__.__name__}: {err}). It needs torchvision (the build matching your "
            "torch) and downloads its backbone weights on first use. Or leave lpips out of --metrics."
        ) from err

    @torch.no_grad()
    def distance(a, b):
        tensors = [(image_tensor(x).float() / 255).to(device or "cpu") for x in (a, b)]
        metric.reset()
        return float(metric(*tensors))

    return distance


def lpips_diversity(groups, distance):
    """Diversity across seeds: the mean pairwise distance between images generated for the same input.

    Args:
        groups: iterable of lists of PIL images; each list holds one input's outputs under different seeds.
        distance: `distance(a, b) -> float`, e.g. from `make_lpips`.

    Returns:
        The mean over inputs of the mean distance over all pairs of that input's images; NaN when no input has
        two images.
    """
    per_input = lpips_per_input(groups, distance)
    return sum(per_input) / len(per_input) if per_input else math.nan


def lpips_per_input(groups, distance):
    """The mean distance over all pairs of each input's images (see `lpips_diversity`), for the inputs with two
    or more images, in order."""
    per_input = []
    for images in groups:
        pairs = list(itertools.combinations(images, 2))
        if pairs:
            per_input.append(sum(distance(a, b) for a, b in pairs) / len(pairs))
    return per_input
