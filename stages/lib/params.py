"""The params schema: the one definition of every key in params.yaml, its type and its allowed range.

Defaults live in params.yaml itself (each with a comment); here every key is required, unknown keys
are an error (with a "did you mean"), and every stage validates the whole file before doing any work.
Kept free of TensorFlow so a bad value is reported in a fraction of a second.
"""

import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from stages.lib.cli import ParamsError

MNIST_TRAIN_SIZE = 60_000  # images in the official training set, split into train + val

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
    seed: int = Field(ge=0)
    shard_size: int = Field(ge=1)
    compression: Literal["none", "gzip"]


class ModelParams(Section):
    hidden_units: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(min_length=1)
    deskew: bool


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
    max_norm: Number = Field(ge=0.0)
    augment_shift: int = Field(ge=0, le=8)
    ema_decay: Fraction
    steps_per_call: int = Field(ge=1)
    jit_compile: bool
    strategy: Literal["default", "mirrored", "multi_worker"]
    cpu_replicas: int = Field(ge=1, le=64)
    seed: int = Field(ge=0)

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
    return f"{source}: {key} = {error['input']!r}: {message[0].lower()}{message[1:]}"


def validate(raw: object, source: str = "params.yaml") -> Params:
    """Check a parsed params mapping against the schema; raise ParamsError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections (data, model, train), found {raw!r}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains a missing key
        raise ParamsError(_describe(errors[0], source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return validate(raw, str(path))
