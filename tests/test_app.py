"""`photobg app` in a real headless Chromium (Playwright driving Debian's `chromium`) on the tiny models, as a
photographer uses it: upload, see the object, click a point (SAM), paint with the brush, place the object,
generate with per-step progress, compare, download the full-resolution PNG, stop a long run; bad uploads get
messages; and the `/generate` API endpoint through `gradio_client`, with a client that goes away mid-run.
Screenshots of each state are saved to test-artifacts/app-*.png."""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the browser tests skip (or fail under CI) in _browser_or_skip
    PlaywrightTimeout = TimeoutError

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
def app_tmp(tmp_path_factory):
    """The app's TMPDIR, where an API request keeps its PNGs while it runs (a `photobg-api-*` folder)."""
    return tmp_path_factory.mktemp("app-tmp")


@pytest.fixture(scope="module")
def app_url(inpaint_model, tiny_sam, tmp_path_factory, app_tmp):
    """`photobg app` on the tiny models, in its own process, with a 1 MB upload limit."""
    port, log = free_port(), tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "OMP_NUM_THREADS": "1", "TMPDIR": str(app_tmp)}
    command = [sys.executable, "-m", "photobg", "app", "--model", str(inpaint_model), "--device", "cpu"]
    # The default segmenter (transparent-background), which is not installed here: plain photos still load.
    command += ["--steps", "2", "--port", str(port), "--max-upload-mb", "1"]
    command += ["--sam-model", str(tiny_sam)]
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
            page.wait_for_selector("#canvas-area[data-drop-target=ready]", state="attached", timeout=30_000)
            yield page
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


ARTIFACTS = REPO / "test-artifacts"


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def fetch(page, selector):
    """The image an <img> shows or a link points at, as a PIL image (what a download gets)."""
    element = page.locator(selector).first
    url = element.get_attribute("src") or element.get_attribute("href")
    return Image.open(io.BytesIO(page.request.get(url).body()))


def set_number(page, elem_id, value):
    """Type a slider's value, and wait until the slider has taken it. A slider in an accordion that has just opened
    may still be mounting and set its own value over the typed one: then it is typed again."""
    field = page.locator(f"#{elem_id} input[type=number]")
    field.wait_for(state="visible")
    taken = f"document.querySelector('#{elem_id} input[type=range]').value == '{value}'"
    for attempt in range(3):
        field.fill(str(value))
        field.press("Enter")
        try:
            page.wait_for_function(taken, timeout=10_000 * (attempt + 1))
            return
        except PlaywrightTimeout:
            if field.input_value() == str(value):  # typed and kept, yet not taken: a real failure
                raise
    raise AssertionError(f"#{elem_id} does not keep the value {value}")


def cat_files(folder):
    """cat.png (skimage's chelsea, 451x300) and cat_mask.png (an ellipse around its head)."""
    photo = Image.fromarray(skimage.data.chelsea())
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((120, 20, 360, 290), fill=255)
    photo.save(folder / "cat.png")
    mask.save(folder / "cat_mask.png")
    return folder / "cat.png", folder / "cat_mask.png"


def click_photo(page, fx, fy):
    """A click on the canvas's Click tab, at fractions of the photo shown, once the photo itself is under the mouse
    (not a loading overlay of an event that is still running)."""
    view = page.locator("#selection img").bounding_box()
    x, y = view["x"] + view["width"] * fx, view["y"] + view["height"] * fy
    page.wait_for_function(
        f"(img => img && img.complete && img.naturalWidth > 0)(document.elementFromPoint({x}, {y}))", timeout=60_000
    )
    page.mouse.click(x, y)


def paint(page, selector, start, end):
    """A brush stroke on the editor's canvas, from `start` to `end` (fractions of the canvas)."""
    box = page.locator(selector).first.bounding_box()
    (x0, y0), (x1, y1) = [(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy) for fx, fy in (start, end)]
    page.mouse.move(x0, y0, steps=5)
    page.wait_for_timeout(300)
    page.mouse.down()
    page.wait_for_timeout(300)
    page.mouse.move(x1, y1, steps=4)  # few events: every one redraws the canvas (in software, headless)
    page.mouse.up()


def placed(page):
    """The canvas's Placement tab's image: the object placed on the output canvas (the tab stays selected)."""
    page.get_by_role("tab", name="Placement").click()
    page.locator("#preview img").wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(500)  # the tab shows the latest preview
    return np.asarray(fetch(page, "#preview img"))


STEP_PROGRESS = re.compile(r"step \d+ of \d+")
# Records every text the results' progress bar shows (a short run may be over before a poll would see it).
RECORD_PROGRESS = """() => {
    window.progressShown = [];
    const results = document.querySelector('#results');
    new MutationObserver(() => {
        const bar = results.querySelector('.progress-level-inner');
        if (bar && bar.innerText) window.progressShown.push(bar.innerText);
    }).observe(results, {subtree: true, childList: true, characterData: true});
}"""


def test_select_place_generate_compare_download(page, tmp_path):
    photo_file, mask_file = cat_files(tmp_path)
    page.set_input_files("#photo input[type=file]", str(photo_file))
    page.set_input_files("#mask input[type=file]", str(mask_file))
    status = page.locator("#object-status")
    status.get_by_text("Object from the mask cat_mask.png. Output 451x300").wait_for(timeout=60_000)
    assert fetch(page, "#selection img").size == (451, 300)  # the photo itself, the object tinted
    shot(page, "1-object")

    selected = np.asarray(fetch(page, "#selection img"))
    click_photo(page, 0.5, 0.4)
    status.get_by_text("edited: 1 point(s) on and 0 off the object (SAM)").wait_for(timeout=60_000)
    assert not np.array_equal(np.asarray(fetch(page, "#selection img")), selected)  # the point, SAM's region
    page.click("#undo")  # and taken back
    status.get_by_text("Object from the mask cat_mask.png. Output").wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    assert np.array_equal(np.asarray(fetch(page, "#selection img")), selected)
    click_photo(page, 0.5, 0.4)
    status.get_by_text("edited: 1 point(s) on and 0 off the object (SAM)").wait_for(timeout=60_000)
    shot(page, "2-click")
    clicked = placed(page)

    page.get_by_role("tab", name="Brush").click()
    page.wait_for_selector("#editor canvas", timeout=30_000)
    legend = page.inner_text("#brush-legend")
    assert "Green: adds to the object" in legend and "Red: removes from it" in legend
    page.wait_for_timeout(1000)
    paint(page, "#editor canvas", (0.3, 0.85), (0.6, 0.85))  # the first colour: adds to the object
    status.get_by_text("and brush strokes").wait_for(timeout=60_000)
    shot(page, "3-brush")
    assert not np.array_equal(placed(page), clicked)
    page.click("#clear-clicks")  # the strokes stay
    status.get_by_text("Object from the mask cat_mask.png, edited: brush strokes.").wait_for(timeout=60_000)

    page.wait_for_timeout(500)
    before = page.locator("#preview img").get_attribute("src")
    set_number(page, "object-scale", 0.5)  # shown on the canvas's Placement tab
    page.wait_for_function(f"document.querySelector('#preview img').src != {before!r}", timeout=60_000)
    assert fetch(page, "#preview img").size == (451, 300)
    shot(page, "4-placement")
    set_number(page, "object-scale", 0)  # back to the photo's framing: the result is compared pixel by pixel

    page.fill("#prompt textarea", "a cat on a sofa")
    page.get_by_label("Compare with plain SD2-inpainting").check()
    page.get_by_text("Advanced settings").click()
    set_number(page, "steps", 25)
    page.evaluate(RECORD_PROGRESS)
    page.click("#generate")
    page.locator("#status").get_by_text("Done: 2 image(s).").wait_for(timeout=300_000)
    shown = page.evaluate("window.progressShown")  # the progress bar's texts while it ran: one per step shown
    progress = r"(SI2|ours), seed 0 \(image [12] of 2\): step \d+ of 2\d\. All images: - [\d.]+%"
    assert any(re.fullmatch(progress, text.strip(), re.S) for text in shown), shown
    shot(page, "5-results")

    captions = page.inner_text("#results")
    assert "SI2, seed 0" in captions and "ours, seed 0" in captions
    command = page.input_value("#command textarea")
    assert command.startswith("photobg generate cat_object.png --prompt 'a cat on a sofa' --seed 0 ")
    assert page.locator("#slider img").count() >= 2  # before (SI2) | after (ours)
    kept = fetch(page, "#object-file a").getchannel("A")  # the selection the command reads: alpha = object
    with page.expect_download() as download:  # the result shown (ours): its full-resolution PNG
        page.click("#download")
    name, ours = download.value.suggested_filename, Image.open(download.value.path())
    assert re.fullmatch(r"cat_object_a-cat-on-a-sofa_[0-9a-f]{8}_s0\.png", name), name  # photobg generate's name
    assert ours.format == "PNG" and ours.size == (451, 300)
    assert json.loads(ours.info["photobg"])["command"] == command  # and carries its parameters
    solid = np.asarray(kept) == 255
    photo = np.asarray(Image.open(photo_file))
    np.testing.assert_array_equal(np.asarray(ours.convert("RGB"))[solid], photo[solid])

    page.locator("#results button:has(img[alt='SI2, seed 0'])").first.click()  # SI2's details
    page.wait_for_function(
        "document.querySelector('#command textarea').value.includes('--controlnet-scale 0.0')", timeout=60_000
    )
    assert page.locator("#object-file a").count() == 1


def test_a_plain_photo_loads_without_the_segmenter_and_the_brush_gives_its_object(page, tmp_path):
    import importlib.util

    if importlib.util.find_spec("transparent_background"):
        pytest.skip("transparent-background is installed: the app finds the object itself")
    status = page.locator("#object-status")
    status.get_by_text("(the transparent-background segmenter) is not installed").wait_for(timeout=30_000)
    photo_file, _ = cat_files(tmp_path)
    page.set_input_files("#photo input[type=file]", str(photo_file))  # no mask, no alpha
    status.get_by_text("No object yet. The automatic object finder").wait_for(timeout=60_000)
    assert "pip install transparent-background" in status.inner_text()
    assert fetch(page, "#selection img").size == (451, 300)  # the photo loaded
    shot(page, "0-no-segmenter")
    page.get_by_role("tab", name="Brush").click()
    page.wait_for_selector("#editor canvas", timeout=30_000)
    page.wait_for_timeout(1000)
    paint(page, "#editor canvas", (0.35, 0.5), (0.65, 0.5))
    status.get_by_text("Object from your brush strokes. Output 451x300").wait_for(timeout=60_000)


def drop_photo(page, path, on="#selection"):
    """Drag a photo file from the desktop and drop it on an element of the page."""
    import base64

    page.evaluate(
        """([selector, name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const dropped = new DataTransfer();
            dropped.items.add(new File([bytes], name, {type: 'image/png'}));
            const target = document.querySelector(selector);
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, {dataTransfer: dropped, bubbles: true, cancelable: true}));
            }
        }""",
        [on, Path(path).name, base64.b64encode(Path(path).read_bytes()).decode()],
    )


def test_layout_one_canvas_results_beside_it(page, tmp_path):
    from playwright.sync_api import expect

    def box(selector):
        return page.locator(selector).first.bounding_box()

    assert page.is_disabled("#stop") and not page.is_disabled("#generate")  # Stop only while a run goes on
    assert box("#stop")["width"] < box("#generate")["width"] / 2
    photo_file, mask_file = cat_files(tmp_path)
    page.set_input_files("#photo input[type=file]", str(photo_file))
    page.set_input_files("#mask input[type=file]", str(mask_file))
    page.locator("#object-status").get_by_text("Object from the mask cat_mask.png. Output").wait_for(timeout=60_000)
    page.fill("#prompt textarea", "a cat on a sofa")
    page.get_by_label("Compare with plain SD2-inpainting").check()
    page.click("#generate")
    page.locator("#status").get_by_text("Done: 2 image(s).").wait_for(timeout=120_000)
    expect(page.locator("#stop")).to_be_disabled()  # the buttons change back just after the last image
    expect(page.locator("#generate")).to_be_enabled()
    for name, (width, height) in {"desktop": (1400, 900), "tablet": (820, 1180)}.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(500)
        canvas, results = box("#canvas-area"), box("#results-area")
        assert results["x"] >= canvas["x"] + canvas["width"] - 1, name  # the results beside the canvas
        assert box("#results")["y"] < height and box("#selection")["y"] < height, name  # both above the fold
        # The photo is shown once: the canvas's other views are on its other tabs.
        shown = [
            selector for selector in ("#selection img", "#editor canvas", "#preview img") if page.is_visible(selector)
        ]
        assert shown == ["#selection img"], (name, shown)
        assert not page.is_visible("#steps")  # the advanced settings are folded
        tall = page.evaluate("document.documentElement.scrollHeight")
        assert tall < 1800, (name, tall)  # 2,428 px at 1400x900 before issue 21
        shot(page, f"layout-{name}")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.get_by_label("Position").click()  # placing the object shows it placed, on the same canvas
    page.get_by_role("option", name="bottom", exact=True).click()
    page.locator("#preview img").wait_for(state="visible", timeout=60_000)
    assert not page.is_visible("#selection img")


def test_stop_a_long_run_and_generate_again(page, tmp_path):
    drop_photo(page, REPO / "assets/coffee_cutout.png")  # the canvas is a drop target
    page.locator("#object-status").get_by_text("Object from its alpha channel").wait_for(timeout=60_000)
    page.click("#generate")
    page.locator("#status").get_by_text("Done: 1 image(s).").wait_for(timeout=60_000)
    assert page.input_value("#command textarea").startswith("photobg generate coffee_cutout.png")
    page.fill("#prompt textarea", "a cup on a table")  # the results shown are not of these settings any more
    page.locator("#status").get_by_text("changed since these results").wait_for(timeout=30_000)
    set_number(page, "num-images", 8)
    page.get_by_text("Advanced settings").click()
    set_number(page, "steps", 100)
    page.click("#generate")
    page.locator("#results").get_by_text(STEP_PROGRESS).wait_for(timeout=120_000)
    # While it runs, nothing of the last run is shown as if it were this one's.
    assert page.input_value("#command textarea") == "" and "Done" not in page.inner_text("#status")
    shot(page, "6-progress")
    page.click("#stop")
    stopped = page.locator("#status").get_by_text(re.compile(r"Stopped: \d of 8 image\(s\) done."))
    stopped.wait_for(timeout=60_000)
    kept = int(re.search(r"Stopped: (\d)", stopped.inner_text()).group(1))
    shot(page, "7-stopped")
    # A new photo: the results, command and status of the last one are gone.
    photo_file, mask_file = cat_files(tmp_path)
    page.locator("#photo button[aria-label='Clear']").click()
    page.set_input_files("#photo input[type=file]", str(photo_file))
    page.set_input_files("#mask input[type=file]", str(mask_file))
    page.locator("#object-status").get_by_text("Object from the mask cat_mask.png").wait_for(timeout=60_000)
    assert page.input_value("#command textarea") == "" and page.inner_text("#status").strip() == ""
    assert page.locator("#results img").count() == 0 and page.locator("#slider img").count() == 0
    set_number(page, "num-images", 1)
    set_number(page, "steps", 2)
    page.click("#generate")
    page.locator("#status").get_by_text("Done: 1 image(s).").wait_for(timeout=60_000)
    assert page.input_value("#command textarea").startswith("photobg generate cat.png --mask cat_mask.png")
    # The session's strip keeps every run's results, whole (not cropped), and "Download all" zips them.
    page.wait_for_function(f"document.querySelectorAll('#strip img').length == {2 + kept}", timeout=30_000)
    assert page.eval_on_selector("#strip img", "img => getComputedStyle(img).objectFit") == "contain"
    assert "a cup on a table" in page.inner_text("#strip") and "seed 0" in page.inner_text("#strip")
    with page.expect_download() as download:
        page.click("#download-all")
    assert download.value.suggested_filename == "photobg-results.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        assert len([name for name in archive.namelist() if "_object" not in name]) == 2 + kept


def test_bad_input_gets_messages_and_the_app_stays_usable(page, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "huge.png")  # about 2 MB, over the app's 1 MB limit
    page.set_input_files("#photo input[type=file]", str(tmp_path / "huge.png"))
    page.get_by_text("exceed the maximum allowed size of 1.0 Mb").wait_for(timeout=30_000)
    (tmp_path / "notes.png").write_text("not an image")
    page.set_input_files("#photo input[type=file]", str(tmp_path / "notes.png"))
    page.locator("#object-status").get_by_text("notes.png: not a readable image.").wait_for(timeout=30_000)
    # A mask that leaves nothing to generate, then room on the canvas for it.
    photo_file, _ = cat_files(tmp_path)
    Image.new("L", (451, 300), 255).save(tmp_path / "everything.png")
    page.locator("#photo button[aria-label='Clear']").click()
    page.set_input_files("#photo input[type=file]", str(photo_file))
    page.set_input_files("#mask input[type=file]", str(tmp_path / "everything.png"))
    page.locator("#object-status").get_by_text("the object fills the whole image").wait_for(timeout=60_000)
    shot(page, "8-full-mask")
    page.fill("#aspect input", "1:1")
    page.press("#aspect input", "Enter")
    page.locator("#object-status").get_by_text("Output 451x451").wait_for(timeout=60_000)


def test_generate_endpoint_through_gradio_client(app_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    photo_file, mask_file = cat_files(tmp_path)
    client = Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"))
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/generate"]
    files, parameters = client.predict(
        handle_file(str(photo_file)),
        "a cat",
        mask=handle_file(str(mask_file)),
        num_images=2,
        steps=2,
        api_name="/generate",
    )
    assert [p["seed"] for p in parameters] == [0, 1]
    assert parameters[1]["command"].startswith("photobg generate cat.png --mask cat_mask.png --prompt 'a cat' --seed 1")
    solid = np.asarray(Image.open(mask_file)) == 255
    photo = np.asarray(Image.open(photo_file))
    for path in files:
        image = Image.open(path)
        assert image.format == "PNG" and image.size == (451, 300)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[solid], photo[solid])
    with pytest.raises(AppError, match="Size '10' is not WIDTHxHEIGHT"):
        client.predict(handle_file(str(photo_file)), "a cat", size="10", api_name="/generate")
    with pytest.raises(AppError, match="Eta: UniPCMultistepScheduler's step takes no eta"):  # the app's scheduler
        client.predict(
            handle_file(str(photo_file)), "a cat", mask=handle_file(str(mask_file)), eta=0.5, api_name="/generate"
        )


# A client that asks for the most the API allows, takes the first image sent, and goes away without a word.
CLIENT_THAT_GOES = """
import os, sys, time
from gradio_client import Client, handle_file
url, photo, downloads = sys.argv[1:]
job = Client(url, verbose=False, download_files=downloads).submit(
    handle_file(photo), "a cup", num_images=8, steps=50, api_name="/generate"
)
while not job.outputs() and not job.done():
    time.sleep(0.05)
files, parameters = job.outputs()[0]
print(len(files), flush=True)
os._exit(0)
"""


def test_an_api_request_whose_client_has_gone_stops_after_its_current_image(app_url, app_tmp, tmp_path):
    photo = str(REPO / "assets/coffee_cutout.png")
    command = [sys.executable, "-c", CLIENT_THAT_GOES, app_url, photo, str(tmp_path / "downloads")]
    client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    made, started, deadline = set(), False, time.monotonic() + 300
    while time.monotonic() < deadline:  # the PNGs of the request's folder, until the request ends with it
        folders = list(app_tmp.glob("photobg-api-*"))
        started = started or bool(folders)
        if started and not folders:
            break
        made.update(png.name for folder in folders for png in folder.glob("*.png"))
        time.sleep(0.05)
    else:
        pytest.fail("the request still runs 5 minutes after its client has gone")
    assert client.communicate(timeout=60)[0].strip() == "1"  # the first image was sent as soon as it was made
    # Its last image may come and go between two looks, so fewer than 7 seen means fewer than 8 made.
    assert 1 <= len(made) < 7, sorted(made)
