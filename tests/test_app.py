"""`photobg app` in a real headless Chromium (Playwright driving Debian's `chromium`) on the tiny model:
upload, generate, results appear at full resolution with the object exact; bad uploads get clear messages.
A screenshot is saved to test-artifacts/app.png."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = "playwright" if sync_playwright is None else None if os.path.exists(CHROMIUM) else CHROMIUM
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing; .ci/run installs it.")
        pytest.skip(f"{missing} is missing (apt-get install -y chromium; pip install playwright).")
    return sync_playwright


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(inpaint_model, tmp_path_factory):
    """`photobg app` on the tiny model, in its own process, with a 1 MB upload limit."""
    port, log = free_port(), tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "photobg", "app", "--model", str(inpaint_model), "--device", "cpu"]
    command += ["--steps", "2", "--port", str(port), "--max-upload-mb", "1", "--segmenter", "threshold"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture()
def page(app_url):
    sync_playwright = _browser_or_skip()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.new_page()
            page.goto(app_url)
            page.wait_for_selector("#photo input[type=file]", state="attached", timeout=30_000)
            yield page
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_upload_generate_and_download_full_resolution(page, tmp_path):
    photo = Image.fromarray(skimage.data.chelsea())
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((120, 20, 360, 290), fill=255)
    photo.save(tmp_path / "cat.png")
    mask.save(tmp_path / "cat_mask.png")
    page.set_input_files("#photo input[type=file]", str(tmp_path / "cat.png"))
    page.set_input_files("#mask input[type=file]", str(tmp_path / "cat_mask.png"))
    page.get_by_label("Prompt").fill("a cat on a sofa")
    page.get_by_label("Compare with plain SD2-inpainting").check()
    page.fill("#num-images input[type=number]", "2")
    page.press("#num-images input[type=number]", "Enter")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#results img').length >= 4", timeout=60_000)
    status = page.inner_text("#status")
    assert "Object from the uploaded mask" in status and "Output 451x300" in status and "Seeds 0–1" in status
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "app.png"), full_page=True)
    captions = page.inner_text("#results")
    assert "ours, seed 0" in captions and "SI2, seed 1" in captions
    source = page.locator("#results img").first.get_attribute("src")
    result = Image.open(io.BytesIO(page.request.get(source).body()))
    assert result.format == "PNG" and result.size == photo.size  # the download is the full result
    solid = np.asarray(mask) == 255
    np.testing.assert_array_equal(np.asarray(result.convert("RGB"))[solid], np.asarray(photo)[solid])


def test_photo_size_limit_and_messages_name_the_uploaded_file(inpaint_model, tmp_path):
    import gradio as gr

    from photobg.api import BackgroundGenerator
    from photobg.app import _prepare

    generator = BackgroundGenerator(inpaint_model, device="cpu", segmenter="threshold")
    photo = tmp_path / "upload-cache" / "big.png"
    photo.parent.mkdir()
    Image.new("RGB", (2000, 1000)).save(photo)
    with pytest.raises(gr.Error) as error:
        _prepare(generator, str(photo), None, "photo's own", 0, "center", max_megapixels=1.5)
    assert error.value.message == "big.png: 2 megapixels; this app takes photos up to 1.5."
    (tmp_path / "mask.png").write_text("text")
    with pytest.raises(gr.Error) as error:
        _prepare(generator, str(photo), str(tmp_path / "mask.png"), "1:1", 0, "center", max_megapixels=5)
    assert error.value.message.startswith("big.png: mask.png: not a readable image")


def test_bad_uploads_get_clear_messages(page, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "huge.png")  # about 2 MB, over the app's 1 MB limit
    page.set_input_files("#photo input[type=file]", str(tmp_path / "huge.png"))
    page.get_by_text("exceed the maximum allowed size of 1.0 Mb").wait_for(timeout=30_000)
    (tmp_path / "notes.png").write_text("not an image")
    page.set_input_files("#photo input[type=file]", str(tmp_path / "notes.png"))
    page.get_by_text("notes.png: not a readable image").wait_for(timeout=30_000)
