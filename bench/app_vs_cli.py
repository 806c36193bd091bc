"""The app's time against the command line's for one photo (default: a 24 MP JPEG and its soft-edged mask, on the
tiny model, 2 steps). Target: the app at most 1.3 times the command line.

    python bench/app_vs_cli.py --size 6000x4000 --steps 2 --repeats 2

Command line: `photobg generate PHOTO --mask MASK ...`, the time it prints (from its first batch to its last
write; start-up and model loading are apart). App: `photobg app` on the same model, driven in Debian's Chromium
(Playwright) as a user drives it: from the click on Generate to "Done" with the result shown (the gallery's and
the slider's images loaded in the page); the upload and the object's preview before it are apart. Each side's
best of `--repeats`. Needs the test extra (playwright) and Debian's chromium.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import skimage.data
from PIL import Image, ImageDraw, ImageFilter

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PROMPT = "a cup of coffee on a marble table"
# Every image of the results and the slider has arrived and is decoded.
SHOWN = """() => {
    const images = [...document.querySelectorAll('#results img, #slider img')];
    return images.length >= 3 && images.every((image) => image.complete && image.naturalWidth > 0);
}"""


def photo_files(folder, width, height):
    """photo.jpg (skimage's coffee, upscaled) and mask.png (an ellipse with a soft edge)."""
    photo = Image.fromarray(skimage.data.coffee()).resize((width, height), Image.BICUBIC)
    mask = Image.new("L", photo.size)
    ImageDraw.Draw(mask).ellipse((width // 4, height // 10, width * 3 // 4, height * 9 // 10), fill=255)
    photo.save(folder / "photo.jpg", quality=92)
    mask.filter(ImageFilter.GaussianBlur(4)).save(folder / "mask.png")
    return folder / "photo.jpg", folder / "mask.png"


def cli_seconds(photo, mask, args, folder):
    """The seconds `photobg generate` prints for making the photo's image."""
    command = [sys.executable, "-m", "photobg", "generate", str(photo), "--mask", str(mask), "--prompt", PROMPT]
    command += ["--model", args.model, "--device", "cpu", "--steps", str(args.steps), "--output-dir", str(folder)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r" in ([\d.]+) s ", out).group(1))


def app_seconds(photo, mask, args, repeats):
    """The seconds from the click on Generate to the result shown, each of `repeats` runs."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "photobg", "app", "--model", args.model, "--device", "cpu", "--port", str(port)]
    command += ["--steps", str(args.steps), "--max-upload-mb", "200", "--segmenter", "threshold"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.set_input_files("#photo input[type=file]", str(photo))
            page.locator("#object-status").get_by_text("Output").wait_for(timeout=300_000)
            page.set_input_files("#mask input[type=file]", str(mask))
            page.locator("#object-status").get_by_text("Object from the mask mask.png").wait_for(timeout=300_000)
            page.fill("#prompt textarea", PROMPT)
            seconds = []
            for _ in range(repeats):
                page.locator("#generate:not([disabled])").wait_for(timeout=300_000)
                start = time.perf_counter()
                page.click("#generate")
                page.locator("#stop:not([disabled])").wait_for(timeout=60_000)  # this run has started
                page.locator("#generate:not([disabled])").wait_for(timeout=600_000)  # and ended
                page.locator("#status").get_by_text("Done: 1 image(s).").wait_for(timeout=60_000)
                page.wait_for_function(SHOWN, timeout=600_000, polling=50)
                seconds.append(time.perf_counter() - start)
            browser.close()
        return seconds
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="6000x4000", help="photo size WxH (default: %(default)s)")
    parser.add_argument("--model", default="tiny-inpainting")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side; the best counts")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="photobg-bench-") as folder:
        folder = Path(folder)
        photo, mask = photo_files(folder, width, height)
        cli = [cli_seconds(photo, mask, args, folder / f"cli{k}") for k in range(args.repeats)]
        app = app_seconds(photo, mask, args, args.repeats)
    print(
        f"{width}x{height} ({width * height / 1e6:.0f} MP) JPEG and soft mask, {args.model}, {args.steps} steps, "
        f"best of {args.repeats}: command line {min(cli):.1f} s (all: {', '.join(f'{s:.1f}' for s in cli)}), "
        f"app {min(app):.1f} s (all: {', '.join(f'{s:.1f}' for s in app)}): app / command line = "
        f"{min(app) / min(cli):.2f} (target: at most 1.3)"
    )


if __name__ == "__main__":
    main()
