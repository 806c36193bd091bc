"""Names and defaults that the command-line options offer, importable without torch or diffusers, so that
`photobg COMMAND --help` answers at once. The modules that use them (`models`, `masks`, `api`) re-export them.
"""

DEFAULT_MODEL = "yahoo-inc/photo-background-generation"
# Weight dtypes by the names the options take (`models.DTYPES` maps them to torch dtypes).
DTYPE_NAMES = ("fp32", "fp16", "bf16")

# SAM for the app's clicks: ViT-B answers a click in about a second on a CPU (evaluation uses ViT-H, as the paper).
DEFAULT_APP_SAM_MODEL = "facebook/sam-vit-base"
# A random SamModel built locally on first use (tests, offline demos), like `backbones.TEST_MODELS`.
TEST_SAM_MODEL = "tiny-sam"

DEFAULT_SEGMENTER = "transparent-background"
# Segmenters that find the object in a photo alone ('sam' needs the object as its prompt; 'given-masks' is
# what --masks does), offered by the CLI and the app.
PHOTO_SEGMENTERS = ("transparent-background", "threshold")

# `photobg evaluate`: the CLIP model of the CLIP score and FID's CLIP features, and FID's feature spaces.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
FID_FEATURES = ("inception", "clip")

# diffusers' default IP-Adapter scale: the reference image steers the UNet as the adapter was trained.
IP_ADAPTER_SCALE = 1.0

# Where the content goes in the free space of the canvas: (fraction across, fraction down); centred by default.
DEFAULT_POSITION = "center"
POSITIONS = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
