"""`photobg app`: a Gradio app."""

HELP = "A web app (Gradio): upload a photo, type a prompt, get new backgrounds."


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("not yet")
