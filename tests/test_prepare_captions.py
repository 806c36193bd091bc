"""Captions in `photobg prepare`: captions files, templates, empty captions, and a captioning model (a tiny random
BLIP built here, no download) with its cache."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from prepare_fixtures import write_pair

from photobg.cli import main
from photobg.prepare.captions import Captioner

WORDS = "a photo of cup dog on table the red blue".split()


def prepare(*args):
    return main(["prepare", *map(str, args), "--quiet"])


def texts(output):
    rows = [r for p in sorted((output / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["id"]: r["text"] for r in rows}


def summary(output):
    return json.loads((output / ".prepare" / "summary.json").read_text())


@pytest.fixture()
def folders(tmp_path):
    for i, name in enumerate(("cup", "dog", "shoe", "vase")):
        write_pair(tmp_path / "images" / f"{name}.jpg", tmp_path / "masks" / f"{name}.png", seed=i)
    return ["--images", tmp_path / "images", "--masks", tmp_path / "masks"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A random BLIP captioner (model + BERT tokenizer + image processor) saved in the Hub layout."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny-blip")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=32)
    ids = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    ids.update(sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = BlipConfig(
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 64, **small, **ids},
        vision_config={"image_size": 32, "patch_size": 8, **small},
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_captions_file_jsonl_template_and_empty(tmp_path, folders):
    records = [
        {"file_name": "cup.jpg", "text": "a red cup"},
        {"id": "images/dog", "captions": ["a dog", "a small dog"]},
        {"file": "shoe", "caption": ""},  # an empty caption is allowed, and counted
    ]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    args = [*folders, "--captions", captions, "--caption-template", "a photo of {caption}, studio"]
    assert prepare(*args, "--output", tmp_path / "out") == 0
    found = texts(tmp_path / "out")
    assert found["images/cup"] == "a photo of a red cup, studio"
    assert found["images/dog"] in ("a photo of a dog, studio", "a photo of a small dog, studio")
    assert found["images/shoe"] == found["images/vase"] == ""
    stats = summary(tmp_path / "out")["captions"]
    assert stats["origins"] == {"file": 3, "none": 1} and stats["empty"] == 2
    assert "empty captions: 2 of 4" in (tmp_path / "out" / "README.md").read_text()


def test_captions_file_csv_and_format_errors(tmp_path, folders):
    (tmp_path / "captions.csv").write_text('file_name,text\ncup.jpg,"a cup, white"\nvase.jpg,a vase\n')
    assert prepare(*folders, "--captions", tmp_path / "captions.csv", "--output", tmp_path / "out") == 0
    assert texts(tmp_path / "out")["images/cup"] == "a cup, white"
    (tmp_path / "bad.jsonl").write_text('{"file_name": "cup.jpg", "text": "ok"}\n{"file_name": oops\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not JSON"):
        prepare(*folders, "--captions", tmp_path / "bad.jsonl", "--output", tmp_path / "bad")
    (tmp_path / "fields.jsonl").write_text('{"name": "cup.jpg", "text": "ok"}\n')
    with pytest.raises(SystemExit, match=r"fields.jsonl:1: a caption record needs an image field"):
        prepare(*folders, "--captions", tmp_path / "fields.jsonl", "--output", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_model_captions_are_batched_cached_and_not_redone(tmp_path, folders, tiny_blip, monkeypatch):
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file_name": "cup.jpg", "text": "a cup"}) + "\n")
    batches = []
    generate = Captioner._generate
    monkeypatch.setattr(
        Captioner, "_generate", lambda self, images: batches.append(len(images)) or generate(self, images)
    )
    args = [
        *folders,
        "--captions",
        tmp_path / "captions.jsonl",
        "--caption-model",
        tiny_blip,
        "--caption-batch-size",
        2,
    ]
    assert prepare(*args, "--device", "cpu", "--output", tmp_path / "out") == 0
    assert batches == [2, 1]  # the three images without a file caption, two per batch
    found = texts(tmp_path / "out")
    assert found["images/cup"] == "a cup"
    cache = [json.loads(line) for line in (tmp_path / "out" / ".prepare" / "captions.jsonl").read_text().splitlines()]
    assert len(cache) == 3
    model_texts = {found[f"images/{name}"] for name in ("dog", "shoe", "vase")}
    assert model_texts == {c["caption"] for c in cache} and all(t and set(t.split()) <= set(WORDS) for t in model_texts)
    assert summary(tmp_path / "out")["captions"]["origins"] == {"file": 1, "model": 3}

    # Other options on the same output: the images are not captioned again.
    monkeypatch.setattr(Captioner, "_generate", lambda self, images: pytest.fail("captioned twice"))
    assert prepare(*args, "--max-side", "24", "--overwrite", "--output", tmp_path / "out") == 0
    assert texts(tmp_path / "out") == found


def test_blip2_family_captioner_runs_batched_and_caches(tmp_path, monkeypatch):
    """BLIP-2 (vision encoder + Q-Former + decoder-only LM) through the same Auto classes: a tiny random one."""
    from transformers import (
        BertTokenizer,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), bos_token="[CLS]", eos_token="[SEP]", model_max_length=64)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    language = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=37,
        word_embed_proj_dim=32,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config={"image_size": 32, "patch_size": 8, **small},
        qformer_config={"vocab_size": len(tokenizer), "encoder_hidden_size": 32, **small},
        text_config=language.to_dict(),
        num_query_tokens=4,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    folder = tmp_path / "tiny-blip2"
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4).save_pretrained(folder)

    from PIL import Image

    captioner = Captioner(folder, tmp_path / "cache.jsonl", device="cpu", batch_size=2)
    images = [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("RGB", (40, 60), (0, 0, 200))] * 2
    captions = captioner(images[:3], ["a", "b", "c"])
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(Captioner, "_generate", lambda self, images: pytest.fail("not read from the cache"))
    assert Captioner(folder, tmp_path / "cache.jsonl")(images[:3], ["a", "b", "c"]) == captions
