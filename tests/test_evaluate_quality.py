"""FID, CLIP score and LPIPS diversity through torchmetrics, against values computed by hand: with feature
extractors whose features are known, and with a tiny random CLIP model built and saved in code."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from photobg.evaluate import quality


class FirstPixels(torch.nn.Module):
    """Features of a 1x2 image: the red values of its two pixels (so a set's mean and covariance are known)."""

    num_features = 2

    def forward(self, images):
        return images[:, 0, 0, :2].double()


def two_pixel_images(points):
    images = []
    for a, b in points:
        array = np.zeros((1, 2, 3), np.uint8)
        array[0, :, 0] = (a, b)
        images.append(Image.fromarray(array))
    return images


def fid_by_hand(real, fake):
    """The Fréchet distance between Gaussians fitted to two feature sets (scipy's matrix square root)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


SQUARE = [(0, 0), (2, 0), (0, 2), (2, 2)]  # mean (1, 1), covariance 4/3 * I


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        (SQUARE, 0.0),
        ([(x + 1, y + 1) for x, y in SQUARE], 2.0),  # same spread, mean moved by (1, 1): |(1, 1)|^2
        ([(2 * x, 2 * y) for x, y in SQUARE], 2 + 2 * (4 / 3 + 16 / 3 - 2 * 8 / 3)),  # covariance 16/3 * I
    ],
)
def test_fid_with_known_features(fake, expected):
    scorer = quality.FidScorer(quality.make_fid(FirstPixels()))
    scorer.add_reference(two_pixel_images(SQUARE))
    assert scorer.score(two_pixel_images(fake)) == pytest.approx(expected, abs=1e-6)


def test_fid_reuses_the_reference_and_matches_scipy():
    rng = np.random.default_rng(0)
    real, fake_a, fake_b = (rng.integers(0, 256, (12, 2)) for _ in range(3))
    scorer = quality.FidScorer(quality.make_fid(FirstPixels()))
    scorer.add_reference(two_pixel_images(real))
    # Two models scored one after the other against one reference set (reset keeps the reference).
    assert scorer.score(two_pixel_images(fake_a)) == pytest.approx(fid_by_hand(real, fake_a), rel=1e-6)
    assert scorer.score(two_pixel_images(fake_b)) == pytest.approx(fid_by_hand(real, fake_b), rel=1e-6)
    assert math.isnan(scorer.score(two_pixel_images(fake_a[:1])))  # one image has no covariance


# ----------------------------------------------------------------------------- tiny CLIP


def write_tiny_clip(folder, tokenizer_folder):
    """Save a random CLIP model (16 wide, one layer, 32 px images) and its processor; returns the folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    layers = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = CLIPConfig(
        text_config=dict(**layers, **special, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(**layers, image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, inpaint_model):
    """A tiny random CLIP model; its tokenizer is the tiny test model's."""
    return write_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", inpaint_model / "tokenizer")


def random_photos(count, seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def embeddings_by_hand(folder, images, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_embeds = model.vision_model(pixel_values=pixels).pooler_output @ model.visual_projection.weight.T
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        text_out = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        text_embeds = text_out.pooler_output @ model.text_projection.weight.T
    return image_embeds.double().numpy(), text_embeds.double().numpy()


def test_clip_score_of_tiny_clip(tiny_clip):
    images, prompts = random_photos(3), ["a cat", "a dog on the beach", ""]
    score, per_image = quality.clip_scores(quality.make_clip_score(quality.load_clip(tiny_clip)), images, prompts)
    image_embeds, text_embeds = embeddings_by_hand(tiny_clip, images, prompts)
    cosines = (
        (image_embeds * text_embeds).sum(1) / np.linalg.norm(image_embeds, axis=1) / np.linalg.norm(text_embeds, axis=1)
    )
    # torchmetrics: 100 * cosine; a batch's score is the mean clamped at 0.
    np.testing.assert_allclose(per_image, np.maximum(100 * cosines, 0), atol=1e-4)
    assert score == pytest.approx(max(100 * cosines.mean(), 0), abs=1e-4)


def test_clip_feature_fid_of_tiny_clip(tiny_clip):
    clip = quality.load_clip(tiny_clip)
    real, fake = random_photos(5, seed=1), random_photos(4, seed=2, size=(24, 36))
    scorer = quality.FidScorer(quality.make_fid("clip", clip))
    scorer.add_reference(real)
    real_features, _ = embeddings_by_hand(tiny_clip, real, [""] * len(real))
    fake_features, _ = embeddings_by_hand(tiny_clip, fake, [""] * len(fake))
    assert scorer.score(fake) == pytest.approx(fid_by_hand(real_features, fake_features), rel=1e-4, abs=1e-6)


class FixedClip(torch.nn.Module):
    """A stand-in CLIP: every image embeds as (1, 0); prompt "a" as (1, 0), "b" as (0, 1), "c" as (-1, 0)."""

    config = type("Config", (), {})()
    TEXT = {1: (1.0, 0.0), 2: (0.0, 1.0), 3: (-1.0, 0.0)}

    def get_image_features(self, pixel_values):
        return torch.tensor([[1.0, 0.0]]).expand(len(pixel_values), 2)

    def get_text_features(self, input_ids, attention_mask=None):
        return torch.tensor([self.TEXT[int(i)] for i in input_ids[:, 0]])


def fixed_processor(images=None, text=None, **kwargs):
    if images is not None:
        return {"pixel_values": torch.zeros(len(images), 1)}
    return {"input_ids": torch.tensor([[" abc".index(t)] for t in text]), "attention_mask": torch.ones(len(text), 1)}


def test_clip_score_formula():
    images = random_photos(3)
    score, per_image = quality.clip_scores(quality.make_clip_score((FixedClip(), fixed_processor)), images, list("abc"))
    assert per_image == pytest.approx([100.0, 0.0, 0.0])  # cosines 1, 0, -1; each clamped at 0
    assert score == pytest.approx(0.0)  # the set's mean cosine is 0


def test_lpips_diversity_with_a_known_distance():
    def mean_abs(a, b):
        return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())

    def flat(value):
        return Image.new("RGB", (4, 4), (value, value, value))

    groups = [[flat(0), flat(10), flat(30)], [flat(5), flat(5)], [flat(7)]]
    # Group 1: pairs 10, 30, 20 -> 20; group 2: 0; group 3 has no pair and is left out.
    assert quality.lpips_diversity(groups, mean_abs) == 10.0
    assert math.isnan(quality.lpips_diversity([[flat(1)]], mean_abs))


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_fid_without_torch_fidelity_says_what_to_do():
    with pytest.raises(quality.QualityMetricUnavailable, match="torch-fidelity.*--fid-features clip"):
        quality.make_fid("inception")


def test_missing_clip_model_says_what_to_do(tmp_path):
    with pytest.raises(quality.QualityMetricUnavailable, match="--clip-model"):
        quality.load_clip(str(tmp_path / "no-such-clip"))


def test_unknown_fid_features():
    with pytest.raises(ValueError, match="inception, clip"):
        quality.make_fid("dino")
