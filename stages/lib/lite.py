"""The exported model as predict runs it: the TFLite copy in the LiteRT interpreter, without TensorFlow.

Export writes `model.tflite` and `predict.json` (the unsure threshold) into the SavedModel folder, so
the one folder holds everything predict needs. Importing this module costs ~0.3 s; TensorFlow 4-5 s.
"""

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

TFLITE_NAME = "model.tflite"  # the converted model, beside saved_model.pb
SETTINGS_NAME = "predict.json"  # {"unsure_below": confidence, ...}, chosen on the validation split by export


class LiteModel:
    """The serving_default signature of `model.tflite`: uint8 [B, 28, 28] -> probabilities [B, 10]."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        with quiet_stderr():  # the C++ runtime's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
            self.runner = self.interpreter.get_signature_runner("serving_default")
            self.runner(images=np.zeros((1, 28, 28), np.uint8))  # the delegate is made on the first run

    def probabilities(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, 28, 28)
        parts = [
            self.runner(images=images[i : i + batch_size])["probabilities"] for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 10), np.float32)


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 sent to /dev/null for the duration (C++ logs that Python cannot silence)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def settings(folder) -> dict:
    """predict.json of an export, or {} when there is none (an export older than the unsure flag)."""
    path = Path(folder) / SETTINGS_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
