"""The params schema: the one definition of every key in params.yaml, its type and its allowed range.

Defaults live in params.yaml itself (each with a comment); here every key is required, unknown keys
are an error (with a "did you mean"), and every stage validates the whole file before doing any work.
Kept free of TensorFlow so a bad value is reported in a fraction of a second.

Every value is bounded by what it may cost or what numpy and TensorFlow accept (seeds below 2**32,
a model-size budget, a depth limit), and the file itself is read with bounds: a regular file of at
most MAX_FILE_BYTES, duplicate keys refused, YAML aliases refused (an alias "bomb" of a few lines
expands to gigabytes), error messages quoting a shortened value.
"""

import difflib
import re
import reprlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from stages.lib import cli
from stages.lib.cli import ParamsError

MNIST_TRAIN_SIZE = 60_000  # images in the official training set, split into train + val
MAX_FILE_BYTES = 1 << 20  # params.yaml is ~4 KB; a larger file is not a params file
MAX_SEED = 2**32 - 1  # numpy's and tf.keras.utils.set_random_seed's limit
MAX_INT = 2**31 - 1  # counts that reach TensorFlow as int32
# The model-size budget: weights and biases of the whole MLP. Training keeps about six float32
# copies of them (weights, gradients, Adam's two moments, the moving average, the checkpoint being
# written), so 20M parameters is ~0.5 GB; the largest model README and RESULTS use (3x1024) has 2.9M.
MAX_PARAMETERS = 20_000_000
MAX_HIDDEN_LAYERS = 32  # RESULTS uses at most 3; thousands of layers are a typo, not an experiment
INPUT_SIZE, NUM_CLASSES = 28 * 28, 10  # the MLP's input and output widths (model.py, without TensorFlow)

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_from_text(value):
    # PyYAML reads `1e-3` (no dot) as a string; accept it as the number it plainly is.
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


Number = Annotated[float, BeforeValidator(_number_from_text)]
Fraction = Annotated[Number, Field(ge=0.0, lt=1.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    source: Literal["bundled", "idx", "tfds"]
    idx_dir: str
    tfds_data_dir: str | None
    verify: bool
    val_size: int = Field(ge=1, le=MNIST_TRAIN_SIZE - 1)
    seed: int = Field(ge=0, le=MAX_SEED)
    shard_size: int = Field(ge=1, le=MAX_INT)
    compression: Literal["none", "gzip"]


class ModelParams(Section):
    hidden_units: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(min_length=1, max_length=MAX_HIDDEN_LAYERS)
    deskew: bool

    @model_validator(mode="after")
    def _fits_budget(self):
        count = parameter_count(self.hidden_units)
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"model.hidden_units {reprlib.repr(self.hidden_units)} has {count:,} parameters, more than the "
                f"budget of {MAX_PARAMETERS:,} (about 0.5 GB to train); use fewer or narrower layers"
            )
        return self


class TrainParams(Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1)
    learning_rate: Number = Field(gt=0.0, le=1e6)
    optimizer: Literal["adam", "sgd"]
    momentum: Fraction
    nesterov: bool
    weight_decay: Number = Field(ge=0.0, lt=1.0)
    lr_schedule: Literal["constant", "cosine"]
    warmup_epochs: int = Field(ge=0)
    label_smoothing: Fraction
    dropout_input: Fraction
    dropout_hidden: Fraction
    max_norm: Number = Field(ge=0.0, le=1e6)
    augment_shift: int = Field(ge=0, le=8)
    ema_decay: Fraction
    patience: int = Field(ge=0, le=10_000)
    steps_per_call: int = Field(ge=1, le=MAX_INT)
    jit_compile: bool
    strategy: Literal["default", "mirrored", "multi_worker"]
    cpu_replicas: int = Field(ge=1, le=64)
    seed: int = Field(ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _consistent(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be smaller than train.epochs ({self.epochs})"
            )
        if self.optimizer == "adam" and (self.nesterov or self.momentum):
            raise ValueError("train.momentum and train.nesterov apply to optimizer sgd only; set them to 0 and false")
        if self.nesterov and not self.momentum:
            raise ValueError("train.nesterov needs train.momentum > 0")
        if self.strategy == "mirrored" and self.batch_size % self.cpu_replicas:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must split evenly over train.cpu_replicas ({self.cpu_replicas})"
            )
        return self


class Params(Section):
    data: DataParams
    model: ModelParams
    train: TrainParams

    @model_validator(mode="after")
    def _batch_fits(self):
        train_size = MNIST_TRAIN_SIZE - self.data.val_size
        if self.train.batch_size > train_size:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) is larger than the training split "
                f"({train_size} images = {MNIST_TRAIN_SIZE} - data.val_size)"
            )
        return self


def parameter_count(hidden_units: list[int]) -> int:
    """Weights and biases of the MLP 784 -> hidden_units -> 10."""
    sizes = [INPUT_SIZE, *hidden_units, NUM_CLASSES]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


_SHORT = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 8, 8, 60, 60


def _quote(value) -> str:
    """A bounded repr for error messages: a huge or deeply nested value is cut short."""
    return cli.shorten(_SHORT.repr(value), 120)


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _known_keys(field.annotation, prefix + name + ".")
    return keys


def _describe(error: dict, source: str) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(Params), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{source}: unknown key {key}{hint}"
    if error["type"] == "missing":
        return f"{source}: missing key {key}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":  # a check across keys: the message names them
        return f"{source}: {message}"
    return f"{source}: {key} = {_quote(error['input'])}: {message[0].lower()}{message[1:]}"


def validate(raw: object, source: str = "params.yaml") -> Params:
    """Check a parsed params mapping against the schema; raise ParamsError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections (data, model, train), found {_quote(raw)}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains a missing key
        raise ParamsError(_describe(errors[0], source)) from None


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (*name) and duplicate keys, each with its line."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"YAML aliases (*{cli.shorten(event.anchor, 40)}) are not allowed in a params file",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
            if duplicate:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {_quote(key)} (the later one would silently win)",
                    problem_mark=key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = cli.read_regular(path, MAX_FILE_BYTES).decode("utf-8")
    except cli.UserError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise ParamsError(f"{path}: cannot read params file ({reason})") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: cannot read params file (not UTF-8 text: byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ParamsError(f"{path}: not valid YAML{where}: {cli.shorten(str(problem), 160)}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid YAML: nested too deeply") from None
    return validate(raw, str(path))
