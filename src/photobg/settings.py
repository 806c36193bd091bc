"""Generation's settings: one typed `GenerationSettings`, read by `photobg generate`, the app, the manifest and the
Python API, as `TrainConfig` is for training.

Each field carries its flag, help and argparse options (so it adds itself to a parser), its default (from
`recipe.py` and `defaults.py`: the one place a generation option's default is named), the app's label (for the
app's messages) and range (its sliders' and its API's bounds), and whether it is part of an output's key or only
recorded. `check` runs every check of the settings once, before any model loads; errors name the flag (or the
app's label).

This module imports neither torch nor diffusers, so `photobg generate --help` answers at once.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

import PIL.Image

from . import recipe as recipe_py  # as `recipe_py`: `recipe` is a field
from .defaults import (
    DEFAULT_MODEL,
    DEFAULT_POSITION,
    DEFAULT_SEGMENTER,
    DTYPE_NAMES,
    IP_ADAPTER_SCALE,
    PHOTO_SEGMENTERS,
    POSITIONS,
)

# The argparse groups of `photobg generate --help`, in order, and the settings each holds.
GROUPS = {
    "object": "the object",
    "prompts": "prompts and seeds",
    "canvas": "canvas",
    "model": "model and sampling",  # what loads the model (the app takes these too)
    "sampling": "model and sampling",
}


class SettingsError(ValueError):
    """A bad setting; the message names the flag (or the app's label) and what is wrong."""


def option(default, flag, help, *, group, label=None, keyed=None, command=True, app_range=None, **argparse):
    """A settings field.

    Args:
        default: its default; flag: the command-line flag; help: the flag's help; group: its `GROUPS` entry.
        label: the app's name of it (for messages). keyed: "always" when it is part of every output's key, "given"
            when only when given (options added after keys existed, so earlier outputs keep their keys), None when
            only recorded. command: whether the reproduce-command carries it. app_range: (low, high) of the app's
            slider and API. argparse: the parser's options (type, choices, action, metavar, default_factory).
    """
    factory = argparse.pop("default_factory", None)
    metadata = dict(flag=flag, help=help, group=group, label=label, keyed=keyed, command=command)
    metadata.update(app_range=app_range, argparse=argparse)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class GenerationSettings:
    """Every generation option that the CLI, the API, the app and the manifest share. Field names are the
    pipeline's (`num_inference_steps`, ...); flags are the CLI's (`--steps`, ...)."""

    # the object
    segmenter: str = option(
        DEFAULT_SEGMENTER,
        "--segmenter",
        "finds the object in photos with neither alpha nor mask (default: %(default)s)",
        group="object",
        keyed="always",
        choices=PHOTO_SEGMENTERS,
    )
    # prompts and seeds
    negative_prompt: str | None = option(None, "--negative-prompt", "what to avoid", group="prompts", keyed="always")
    num_images: int = option(
        1,
        "--num-images",
        "images per prompt (default: %(default)s)",
        group="prompts",
        label="Number of images",
        command=False,
        app_range=(1, 8),
        type=int,
    )
    seed: int = option(
        0, "--seed", "seed of image 1; image k uses SEED+k-1 (default: 0)", group="prompts", command=False, type=int
    )
    # canvas
    size: str | None = option(
        None, "--size", "output size WxH, e.g. 1024x1024 (default: the photo's size)", group="canvas", keyed="always"
    )
    aspect: str | None = option(
        None,
        "--aspect",
        "output aspect ratio W:H, e.g. 1:1, 4:5, 16:9: the photo is padded to it",
        group="canvas",
        keyed="always",
    )
    object_scale: float | None = option(
        None,
        "--object-scale",
        "fraction (0, 1] of the canvas the object spans",
        group="canvas",
        label="Object scale",
        keyed="always",
        app_range=(0, 1),
        type=float,
    )
    position: str = option(
        DEFAULT_POSITION, "--position", "where the photo goes", group="canvas", keyed="always", choices=list(POSITIONS)
    )
    working_size: int | None = option(
        None,
        "--working-size",
        "long side to generate at (default: the model's)",
        group="canvas",
        keyed="always",
        type=int,
    )
    # model
    model: str = option(DEFAULT_MODEL, "--model", None, group="model", keyed="always")  # help: `_model_help`
    controlnet: str | None = option(
        None,
        "--controlnet",
        "ControlNet (Hub id, folder or .pth file) for a base --model",
        group="model",
        keyed="always",
    )
    scheduler: str | None = option(
        None,
        "--scheduler",
        "diffusers scheduler class (e.g. DDIMScheduler), or 'model' for the model's own "
        "(default: the authors' recipe, UniPC as their notebook ran it)",
        group="model",
        keyed="always",
    )
    # `KEY=VALUE` specs as given; `check` types them from the scheduler class's defaults into a {key: value} dict.
    scheduler_options: list = option(
        None,
        "--scheduler-option",
        "a value of the scheduler's config, typed as its default is (e.g. timestep_spacing=trailing); repeatable",
        group="model",
        keyed="given",
        action="append",
        metavar="KEY=VALUE",
        default_factory=list,
    )
    device: str | None = option(None, "--device", "cuda, cpu, ... (default: CUDA if present)", group="model")
    dtype: str | None = option(
        None,
        "--dtype",
        "weights dtype (default: fp16 on CUDA, else fp32)",
        group="model",
        choices=sorted(DTYPE_NAMES),
    )
    compile: bool = option(
        False,
        "--compile",
        "torch.compile the UNet's and ControlNet's transformer blocks (regional compilation): slow first call "
        "(its time is reported), faster after",
        group="model",
        action="store_true",
    )
    vae_tiling: bool = option(
        False, "--vae-tiling", "tiled VAE: bounded memory for large canvases", group="model", action="store_true"
    )
    vae: str | None = option(
        None,
        "--vae",
        "a VAE to use instead of the model's (Hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix: SDXL's own "
        "VAE overflows in fp16",
        group="model",
        keyed="given",
        metavar="PATH_OR_ID",
    )
    # `PATH[:SCALE]` specs as given; `check` turns them into `models.Lora`s (their weights files, checked).
    loras: list = option(
        None,
        "--lora",
        "LoRA weights (a .safetensors file, or a folder holding one) for the UNet and text encoders, at SCALE "
        "(default 1; 0 = off); repeatable. Needs peft. A conv_in trained for a 4-channel UNet is left out on a "
        "9-channel one, with a warning",
        group="model",
        keyed="given",
        action="append",
        metavar="PATH[:SCALE]",
        default_factory=list,
    )
    ip_adapter: str | None = option(
        None,
        "--ip-adapter",
        "IP-Adapter weights (a file, or a folder holding one) with its image_encoder/ folder beside it: "
        "lets a reference image steer the background's style",
        group="model",
        keyed="given",
        metavar="PATH",
    )
    ip_adapter_scale: float = option(
        IP_ADAPTER_SCALE,
        "--ip-adapter-scale",
        "how strongly the reference image steers the background (0 = not at all; default: %(default)s)",
        group="model",
        label="Reference strength",
        keyed="given",
        app_range=(0, 1.5),
        type=float,
        metavar="SCALE",
    )
    # sampling
    # A recipe sets the settings it names that were not given (`resolve`); they, not its name, are keyed.
    recipe: str | None = option(
        None,
        "--recipe",
        "a named sampling recipe (scheduler, options, timesteps, steps, guidance, eta) of a few-step LoRA, which "
        "--lora loads; explicit flags override it (docs/recipes.md)",
        group="sampling",
        choices=list(recipe_py.RECIPES),
    )
    # A comma-separated text as given; `check` turns it into a list of ints.
    timesteps: list | None = option(
        None,
        "--timesteps",
        "fixed timesteps, descending (e.g. 999,749,499,249), for a scheduler that takes them; sets the steps",
        group="sampling",
        label="Fixed timesteps",
        keyed="given",
        metavar="T1,T2,...",
    )
    eta: float | None = option(
        None,
        "--eta",
        "the scheduler step's eta (DDIM's noise, TCD's gamma; default: the pipeline's, 0)",
        group="sampling",
        label="Eta",
        keyed="given",
        type=float,
    )
    controlnet_conditioning_scale: float = option(
        recipe_py.CONTROLNET_CONDITIONING_SCALE,
        "--controlnet-scale",
        "0 = plain SD2-inpainting (default: %(default)s)",
        group="sampling",
        label="ControlNet scale",
        keyed="always",
        app_range=(0, 2),
        type=float,
    )
    num_inference_steps: int = option(
        recipe_py.NUM_INFERENCE_STEPS,
        "--steps",
        "denoising steps (default: %(default)s)",
        group="sampling",
        label="Denoising steps",
        keyed="always",
        app_range=(1, 100),  # the app makes one generation at a time: this bounds how long one request can take
        type=int,
    )
    guidance_scale: float = option(
        recipe_py.GUIDANCE_SCALE,
        "--guidance",
        "classifier-free guidance (default: %(default)s)",
        group="sampling",
        label="Guidance scale",
        keyed="always",
        app_range=(0, 20),
        type=float,
    )
    # Images per model call: changes only the floating-point rounding, so it is recorded, not keyed or in the command.
    batch_size: int = option(
        1, "--batch-size", "images per model call (default: %(default)s)", group="sampling", command=False, type=int
    )
    reference_image: str | None = option(
        None,
        "--reference-image",
        "an image whose style the background follows, through --ip-adapter (the same for every output)",
        group="sampling",
        keyed="given",
        metavar="FILE",
    )

    # ------------------------------------------------------------------------- the parser

    @classmethod
    def add_arguments(cls, parser, groups=None):
        """Add the flags of the fields in `groups` ({group name: parser or argument group}; default: every field
        to `parser`), in the fields' order; --size and --aspect exclude each other."""
        groups = groups or dict.fromkeys(GROUPS, parser)
        exclusive = {}
        for f in dataclasses.fields(cls):
            target = groups.get(f.metadata["group"])
            if target is None:
                continue
            if f.name in ("size", "aspect"):
                if target not in exclusive:
                    exclusive[target] = target.add_mutually_exclusive_group()
                target = exclusive[target]
            cls.add_argument(target, f.name)

    @classmethod
    def add_argument(cls, parser, name, **overrides):
        """Add one field's flag (`overrides`: argparse options that differ, e.g. the app's help for --steps)."""
        f = _field(name)
        options = dict(f.metadata["argparse"])
        options["help"] = f.metadata["help"] if name != "model" else _model_help()
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
        elif options.get("action") == "append":
            options["default"] = []
        if name in RECIPE_FIELDS:  # a recipe sets only what was not given: note what was
            options["action"] = _AppendGiven if options.get("action") == "append" else _StoreGiven
        parser.add_argument(f.metadata["flag"], **{**options, **overrides})

    @classmethod
    def from_args(cls, args):
        """The settings of parsed arguments, resolved (`resolve`: the recipe sets what was not given); fields whose
        flag the parser lacks keep their defaults."""
        values = {}
        for f in dataclasses.fields(cls):
            dest = _dest(f)
            if hasattr(args, dest):
                values[f.name] = getattr(args, dest)
        given = {f.name for f in dataclasses.fields(cls) if _dest(f) in getattr(args, GIVEN, ())}
        return cls(**values).resolve(given)

    def resolve(self, given=None):
        """Apply the recipe (`--recipe`) to the settings it names that were not `given`, and let fixed timesteps
        set the number of steps where the steps were not given. A recipe's fixed timesteps are dropped where the
        steps are given and the timesteps are not.

        Args:
            given: the names of the fields given explicitly (default: those that differ from their defaults).

        Returns:
            self, changed in place.
        """
        if given is None:
            given = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != default(f.name)}
        if self.recipe is not None and self.recipe in recipe_py.RECIPES:
            for name, value in recipe_py.RECIPES[self.recipe].settings().items():
                if name not in given:
                    setattr(self, name, value)
        return self._fit_steps(given)

    def changed(self, **values):
        """A copy with `values` (the app's page gives each setting, changed or not), the steps and the fixed timesteps
        made to agree by `resolve`'s rule, the values that differ from these settings' taken as given."""
        given = {name for name, value in values.items() if value != getattr(self, name)}
        return dataclasses.replace(self, **values)._fit_steps(given)

    def _fit_steps(self, given):
        """The command line's rule for steps and fixed timesteps: steps given without timesteps drop the timesteps
        (a recipe's, or the app's start); timesteps given without steps set the number of steps. Returns self."""
        if self.timesteps and "num_inference_steps" in given and "timesteps" not in given:
            self.timesteps = None
        elif self.timesteps and "num_inference_steps" not in given:
            try:
                self.num_inference_steps = len(parse_timesteps(self.timesteps))
            except ValueError:
                pass  # `check` names the bad --timesteps
        return self

    def command_flags(self):
        """{flag: value} of the fields a reproduce-command carries, in the fields' order, values as given (a flag
        that takes no value: True or False; a repeatable one: its list)."""
        return {f.metadata["flag"]: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["command"]}

    # ------------------------------------------------------------------------- the checks

    def check(self):
        """Every check of the settings, before any model loads; turns `loras` into checked `models.Lora`s.

        Raises:
            SettingsError: one line naming the flag (and file) and what is wrong.
        """
        checks = [
            (self.num_images >= 1, "--num-images must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.object_scale is None or 0 < self.object_scale <= 1, "--object-scale must be in (0, 1]"),
            # torch takes seeds below 2**64 and wraps negative ones; -1 means "random" in other tools, not here.
            (self.seed >= 0, "--seed must be at least 0 (photobg has no 'random' seed value)"),
            (self.seed + self.num_images <= 2**63, "--seed plus --num-images must stay below 2**63"),
            (
                self.negative_prompt is None or self.guidance_scale > 1,
                "--negative-prompt works through classifier-free guidance: it needs --guidance above 1",
            ),
            (self.reference_image is None or self.ip_adapter, "--reference-image needs --ip-adapter (the weights)"),
            (self.ip_adapter is None or self.reference_image, "--ip-adapter needs --reference-image (the style)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(f"{message}.")
        self.check_model()
        if self.reference_image:
            from .masks import load_image

            try:
                load_image(self.reference_image)
            except ValueError as err:
                raise SettingsError(f"--reference-image {err}") from None
        self.check_sampling()
        self.check_canvas()

    def check_model(self):
        """Check the device, scheduler (and its options, timesteps, eta, recipe), LoRA and IP-Adapter settings before
        any model loads (errors name the flag and file); turns `loras` into `models.Lora`s."""
        from .models import check_compile, check_scheduler, parse_lora, resolve_device

        for flag, check, value in (
            ("--device", resolve_device, self.device),
            ("--scheduler", check_scheduler, self.scheduler),
            ("--compile", lambda device: self.compile and check_compile(device), self.device),
        ):
            try:
                check(value)
            except ValueError as err:
                raise SettingsError(f"{flag}: {err}") from None
        if not math.isfinite(self.ip_adapter_scale):
            raise SettingsError(f"--ip-adapter-scale must be a finite number, not {self.ip_adapter_scale}.")
        import importlib.util

        if self.loras and importlib.util.find_spec("peft") is None:
            raise SettingsError("--lora needs the peft package: pip install 'photobg[lora]' (or pip install peft).")
        try:
            self.loras = [parse_lora(spec) for spec in self.loras]
        except (OSError, ValueError) as err:
            raise SettingsError(f"--lora: {err}") from None
        if self.ip_adapter:
            from .models import ip_adapter_weights

            try:
                ip_adapter_weights(self.ip_adapter)
            except OSError as err:
                raise SettingsError(f"--ip-adapter: {err}") from None
        self.check_scheduler_settings()

    def check_scheduler_settings(self, names="flag", backbone=None):
        """Check the scheduler's options, timesteps and eta against the scheduler class, and the recipe against the
        model's backbone (`check_recipe`), before any weights load; types `scheduler_options` into a {key: value}
        dict and `timesteps` into a list of ints. The model's configs are read only where needed (`--scheduler
        model` with options, timesteps or eta; a recipe made for some backbones, unless `backbone` is given).
        `names`: as in `check_sampling`, or "name" for the Python API's argument names."""
        from .models import scheduler_options

        names = _names(names)
        self.timesteps = parse_timesteps(self.timesteps, names["timesteps"])
        cls = self._scheduler_class()
        if cls is not None:
            try:
                self.scheduler_options = scheduler_options(cls, self.scheduler_options)
            except ValueError as err:
                raise SettingsError(f"{names['scheduler_options']}: {err}") from None
        self.check_steps(cls, names)
        self.check_recipe(names, backbone)

    def check_steps(self, cls, names="flag"):
        """Check the fixed timesteps (their count is the number of steps) and eta against scheduler class `cls`
        (None: not known yet; only the values are checked); types `timesteps` into a list of ints. The app checks
        each image's settings so, against the scheduler it has loaded."""
        from .models import check_timesteps

        names = _names(names)
        self.timesteps = parse_timesteps(self.timesteps, names["timesteps"])
        if self.timesteps is not None:
            if len(self.timesteps) != self.num_inference_steps:
                raise SettingsError(
                    f"{names['num_inference_steps']} {self.num_inference_steps} does not match {names['timesteps']} "
                    f"({len(self.timesteps)} timesteps): the timesteps set the number of steps; give one of the two."
                )
            try:
                if cls is not None:
                    check_timesteps(cls, self.timesteps)
            except ValueError as err:
                raise SettingsError(f"{names['timesteps']}: {err}") from None
        self._check_eta(cls, names["eta"])

    def _check_eta(self, cls, name):
        from .models import takes_eta

        if self.eta is None:
            return
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise SettingsError(f"{name} must be a finite number of at least 0, not {self.eta}.")
        if cls is not None and not takes_eta(cls):
            raise SettingsError(f"{name}: {cls.__name__}'s step takes no eta (DDIMScheduler and TCDScheduler do).")

    def _scheduler_class(self):
        """The scheduler class the settings choose; the model's own is read from its config only where options,
        timesteps or eta need it (None where it cannot be read: the loader says why)."""
        from .models import scheduler_class, scheduler_name

        config = {}
        if self.scheduler == recipe_py.MODEL_SCHEDULER:
            if not (self.scheduler_options or self.timesteps or self.eta is not None):
                return None
            config = self._model_config("scheduler")
            if config.get("_class_name") is None:
                return None
        return scheduler_class(scheduler_name(self.scheduler, config))

    def check_recipe(self, names, backbone=None):
        """Refuse an unknown recipe, and one on a backbone it was not made for, naming both (the backbone is read
        from the model's configs unless given); warn when a recipe that needs a LoRA runs without any.
        `names`: {field: its name in messages} (`_names`)."""
        if self.recipe is None:
            return
        if self.recipe not in recipe_py.RECIPES:
            raise SettingsError(f"{names['recipe']} {self.recipe!r} is not one of: {', '.join(recipe_py.RECIPES)}.")
        recipe = recipe_py.RECIPES[self.recipe]
        if recipe.backbones is None:
            return
        backbone = backbone or self._backbone()
        if backbone is not None and backbone not in recipe.backbones:
            raise SettingsError(
                f"{names['recipe']} {self.recipe} is made for {' and '.join(recipe.backbones)}, but {names['model']} "
                f"{self.model} is {backbone}."
            )
        if not self.loras:
            self._warn_without_lora(recipe, backbone, names)

    def _warn_without_lora(self, recipe, backbone, names):
        """`warnings.warn` that the recipe samples for its LoRA (the one of the backbone's family, where known): the
        few steps of a model without it (or without the LoRA fused in, which photobg cannot see) make a poor image.
        `photobg generate` shows it as one `warning:` line."""
        import warnings

        loras = [lora for family, lora in recipe.loras.items() if backbone in recipe_py.FAMILIES[family]]
        wanted = " or ".join(f"{file} of {hub_id}" for hub_id, file in loras or recipe.loras.values())
        warnings.warn(
            f"{names['recipe']} {self.recipe} expects the LoRA {wanted}, and none is given ({names['loras']}): "
            f"without it (or the LoRA fused into the model), its {recipe.steps} steps make a poor image; "
            "docs/recipes.md lists each recipe's LoRA.",
            stacklevel=3,
        )

    def _backbone(self):
        """The model's backbone name, read from its configs; None where they cannot be read (the loader says why)."""
        from .backbones import detect_backbone
        from .models import resolve_model

        try:
            return detect_backbone(resolve_model(self.model)).name
        except (OSError, ValueError):
            return None

    def _model_config(self, component):
        """A component's config of the model, or {} where it cannot be read (the loader then says why)."""
        from .hub import load_component_config
        from .models import resolve_model

        try:
            return load_component_config(resolve_model(self.model), component)
        except (OSError, ValueError):
            return {}

    def check_sampling(self, names="flag"):
        """Refuse sampling values that mean nothing (`SAMPLING_RULES`), naming the field by its flag or, with
        `names="label"`, by the app's label; the app also checks that the reference strength is finite."""
        names = _names(names)
        sampling = ("num_inference_steps", "guidance_scale", "controlnet_conditioning_scale", "working_size")
        try:
            check_sampling(names, **{name: getattr(self, name) for name in sampling})
        except ValueError as err:
            raise SettingsError(str(err)) from None

    def check_canvas(self):
        """--size within photobg's canvas limit, --aspect a ratio; errors name the flag."""
        from .masks import parse_aspect, parse_size

        try:
            if self.size:
                check_canvas_size(parse_size(self.size), f"--size {self.size}")
            if self.aspect:
                parse_aspect(self.aspect)
        except ValueError as err:
            message = str(err) if str(err).startswith("--size") else f"--{'size' if self.size else 'aspect'}: {err}"
            raise SettingsError(message) from None

    # ------------------------------------------------------------------------- what the generator takes

    def loading(self):
        """The keyword arguments of `BackgroundGenerator(...)` (after `check`: `loras` are `models.Lora`s)."""
        names = ("model", "controlnet", "device", "dtype", "scheduler", "scheduler_options", "segmenter", "compile")
        names += ("vae_tiling", "vae")
        names += ("loras", "ip_adapter", "ip_adapter_scale")
        return {name: getattr(self, name) for name in names}

    def canvas(self):
        """The keyword arguments of `BackgroundGenerator.prepare`."""
        return dict(size=self.size, aspect=self.aspect, object_scale=self.object_scale, position=self.position)

    def sampling(self):
        """The keyword arguments of `BackgroundGenerator.run`."""
        return dict(
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            controlnet_conditioning_scale=self.controlnet_conditioning_scale,
            working_size=self.working_size,
            batch_size=self.batch_size,
            ip_adapter_image=self.reference_image,
            timesteps=self.timesteps,
            eta=self.eta,
        )


def _field(name):
    return next(f for f in dataclasses.fields(GenerationSettings) if f.name == name)


def _names(kind):
    """{field: how messages name it}: by `kind` "flag" (`--steps`), "label" (the app's, else the flag) or "name" (the
    field's own name, the Python API's argument name); a dict is taken as it is."""
    if isinstance(kind, dict):
        return kind
    fields = dataclasses.fields(GenerationSettings)
    if kind == "name":
        return {f.name: f.name for f in fields}
    return {f.name: f.metadata[kind] or f.metadata["flag"] for f in fields}


def _dest(f):
    """The argparse destination of a field's flag (`--steps` -> `steps`)."""
    return f.metadata["flag"].lstrip("-").replace("-", "_")


def default(name):
    """A field's default value."""
    f = _field(name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def label(name):
    """The app's name of a field."""
    return _field(name).metadata["label"]


def app_range(name):
    """(low, high) of a field in the app: its slider's range, and what its API takes."""
    return _field(name).metadata["app_range"]


def keyed_fields():
    """The fields that decide an output's pixels (`manifest.output_key`), with how: "always" or "given"."""
    return {f.name: f.metadata["keyed"] for f in dataclasses.fields(GenerationSettings) if f.metadata["keyed"]}


def _model_help():
    from .backbones import TEST_MODELS

    return (
        f"Hub id or folder of a complete model, or a base model with --controlnet; "
        f"{' / '.join(TEST_MODELS)} build a random test model offline (default: %(default)s)"
    )


# The settings a recipe sets (`Recipe.settings`): their flags note that they were given (`GIVEN`), so that a recipe
# never overrides an explicit flag, even one given its default value.
RECIPE_FIELDS = ("scheduler", "scheduler_options", "timesteps", "num_inference_steps", "guidance_scale", "eta")
GIVEN = "given_settings"  # the parsed arguments' set of the destinations of the given `RECIPE_FIELDS`


class _StoreGiven(argparse.Action):
    """argparse's "store", noting the flag as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, set()) | {self.dest})


class _AppendGiven(argparse.Action):
    """argparse's "append", noting the flag as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, set()) | {self.dest})


def timesteps_text(timesteps):
    """Fixed timesteps as the comma-separated text that `--timesteps` and the app's field take ("" for none; a text
    as it is): what `parse_timesteps` reads back."""
    return timesteps if isinstance(timesteps, str) else ",".join(map(str, timesteps or []))


def parse_timesteps(value, name="--timesteps"):
    """Fixed timesteps as a list of ints, from a comma-separated text (`--timesteps`, the app's field) or a list (the
    API); None for none (None, or a blank text). A `SettingsError` naming the field (`name`) when they are no
    integers."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else value
        return [int(part) for part in parts if not isinstance(part, str) or part.strip()]
    except (TypeError, ValueError):
        raise SettingsError(f"{name} {value!r} is not a comma-separated list of integers.") from None


# Upper bounds, checked before anything is generated (and by `photobg generate` before the model loads).
# A canvas is at most the largest image Pillow opens without refusing it as a decompression bomb (about 179
# megapixels; a 150-megapixel camera's photo fits), so every output can be read back. The working size is at
# most 8x SD2's native 512 px and 4x SDXL's 1024 px: beyond it the models make no usable image and their
# memory runs into tens of GB.
MAX_CANVAS_PIXELS = 2 * PIL.Image.MAX_IMAGE_PIXELS
MAX_WORKING_SIZE = 4096


def check_canvas_size(size, name="the canvas"):
    """Raise a `ValueError` when an output canvas of `size` = (width, height) is above `MAX_CANVAS_PIXELS`."""
    width, height = size
    if width * height > MAX_CANVAS_PIXELS:
        raise ValueError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), above photobg's limit of "
            f"{MAX_CANVAS_PIXELS / 1e6:.0f} megapixels: choose a smaller size or aspect ratio."
        )


# Classifier-free guidance in diffusers is on only for guidance_scale > 1: every value up to 1 gives the same
# unguided image. 0 and 1 are accepted as "off" (few-step models are run at 0); a negative value or one between
# 0 and 1 would suggest an effect it does not have, so it is refused.
GUIDANCE_RULE = "0 or at least 1 (0 and 1 both turn classifier-free guidance off; diffusers applies it only above 1)"
# What each sampling value must be: (test, the rule in words).
SAMPLING_RULES = {
    "num_inference_steps": (lambda v: v >= 1, "at least 1"),
    "guidance_scale": (lambda v: v == 0 or v >= 1, GUIDANCE_RULE),
    "controlnet_conditioning_scale": (lambda v: v >= 0, "at least 0 (0 = the base model alone, no ControlNet)"),
    "working_size": (lambda v: 8 <= v <= MAX_WORKING_SIZE, f"between 8 and {MAX_WORKING_SIZE} pixels"),
}


def check_sampling(names=None, **values):
    """Refuse sampling values that mean nothing (or not what they seem), by `SAMPLING_RULES`.

    Args:
        names: how the caller's user knows each argument, e.g. {"guidance_scale": "--guidance"}; by default
            the pipeline's argument names.
        **values: `num_inference_steps`, `guidance_scale`, `controlnet_conditioning_scale`, `working_size`;
            None = not given.

    Raises:
        ValueError: naming the argument, its value and the values it accepts.
    """
    for key, value in values.items():
        test, rule = SAMPLING_RULES[key]
        if value is not None and not (math.isfinite(value) and test(value)):
            raise ValueError(f"{(names or {}).get(key, key)} must be {rule}, not {value}.")
