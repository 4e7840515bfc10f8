"""The exported model's serving signature, its byte-identical fingerprint, its TFLite copy, and the check
of a saved copy on the test split (with the TFLite copy's agreement and the unsure threshold)."""

import hashlib
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from stages.lib import cli, records


class ServingModule(tf.Module):
    """What export saves: `serve` takes uint8 images [None, 28, 28], returns probabilities and class ids."""

    def __init__(self, mlp):
        super().__init__(name="serving")
        self.mlp = mlp

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")], autograph=False)
    def serve(self, images):
        # A loaded signature does not enforce its input shape; without this, any multiple of 784 pixels passes.
        images = tf.ensure_shape(images, [None, 28, 28])
        logits = self.mlp(self.mlp.inputs(images))
        return {"probabilities": tf.nn.softmax(logits), "class_ids": tf.argmax(logits, axis=1)}


def load_serving(saved_model: str):
    """The serving_default signature of `saved_model`; UserError if it cannot be loaded."""
    try:
        return tf.saved_model.load(saved_model).signatures["serving_default"]
    except (OSError, ValueError, KeyError, IndexError, tf.errors.OpError) as exc:  # IndexError: truncated variables
        reason = str(exc).splitlines()[0][:160]
        raise cli.UserError(f"{saved_model}: cannot load the SavedModel ({reason}); rerun `dvc repro export`") from None


def serving_probabilities(serve, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The signature's probabilities for uint8 images [N, 784] or [N, 28, 28], in batches."""
    images = images.reshape(-1, 28, 28)
    return np.concatenate(
        [
            serve(images=tf.constant(images[i : i + batch_size]))["probabilities"].numpy()
            for i in range(0, len(images), batch_size)
        ]
    )


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """{"accuracy", "errors", "count"} of the signature's probabilities on one split."""
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": round(float(np.mean(predicted == labels)), 6),
        "errors": int(np.sum(predicted != labels)),
        "count": len(labels),
    }


def score_test_split(saved_model: str, data: str, batch_size: int = 1000) -> dict:
    """Load `saved_model` and score its serving_default signature on the prepared test split."""
    images, labels = records.read_split(data, "test")
    return scores(serving_probabilities(load_serving(saved_model), images, batch_size), labels)


def stable_fingerprint(folder) -> str:
    """Replace the random UUID TensorFlow writes into fingerprint.pb on every save by one derived from the
    SavedModel's content (the hashes fingerprint.pb already holds), so the same checkpoint gives the same
    bytes. TensorFlow still loads the folder and `saved_model_cli` still reads it; returns the UUID."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = Path(folder) / "fingerprint.pb"
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(uuid.UUID(bytes=digest[:16], version=4))
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))
    return fingerprint.uuid


def to_tflite(saved_model) -> bytes:
    """The SavedModel's serving_default signature converted for the TFLite/LiteRT interpreter (float32,
    builtin ops only; the same bytes for the same SavedModel)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray, max_flagged_correct: float = 0.02) -> float:
    """The highest top-class probability below which at most `max_flagged_correct` of the correct answers
    fall (on the validation split): answers below it are flagged unsure."""
    return round(float(np.quantile(confidence[correct], max_flagged_correct)), 4) if correct.any() else 0.0


def check_tflite(tflite: str, splits: dict, reference: np.ndarray) -> dict:
    """The TFLite copy (what predict runs) against the SavedModel's probabilities `reference` on the test
    split: its accuracy, the test images it classes differently, the largest probability difference; and
    the unsure threshold, chosen on the validation split with the TFLite copy. `splits`: {"test", "val"}
    -> (uint8 images, labels), as records.read_split gives them."""
    from stages.lib import lite

    runner = lite.LiteModel(tflite)
    images, labels = splits["test"]
    probabilities = runner.probabilities(images)
    found = {
        "tflite_test_accuracy": scores(probabilities, labels)["accuracy"],
        "tflite_test_disagreements": int(np.sum(probabilities.argmax(1) != reference.argmax(1))),
        "tflite_test_max_abs_difference": float(np.abs(probabilities - reference).max()),
    }
    images, labels = splits["val"]
    probabilities = runner.probabilities(images)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    threshold = confidence_threshold(confidence, correct)
    flagged = confidence < threshold
    found["unsure_below"] = threshold
    found["val_errors_flagged"] = round(float(flagged[~correct].mean()), 4) if (~correct).any() else 0.0
    found["val_correct_flagged"] = round(float(flagged[correct].mean()), 4)
    return found
