"""The exported model's serving signature, and the score of a saved copy on the test split."""

import numpy as np
import tensorflow as tf

from stages.lib import cli, records


class ServingModule(tf.Module):
    """What export saves: `serve` takes uint8 images [None, 28, 28], returns probabilities and class ids."""

    def __init__(self, mlp):
        super().__init__(name="serving")
        self.mlp = mlp

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def serve(self, images):
        # A loaded signature does not enforce its input shape; without this, any multiple of 784 pixels passes.
        images = tf.ensure_shape(images, [None, 28, 28])
        logits = self.mlp(self.mlp.inputs(images))
        return {"probabilities": tf.nn.softmax(logits), "class_ids": tf.argmax(logits, axis=1)}


def score_test_split(saved_model: str, data: str, batch_size: int = 1000) -> dict:
    """Load `saved_model` and score its serving_default signature on the prepared test split."""
    images, labels = records.read_split(data, "test")
    try:
        serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    except (OSError, ValueError, KeyError, IndexError, tf.errors.OpError) as exc:  # IndexError: truncated variables
        reason = str(exc).splitlines()[0][:160]
        raise cli.UserError(f"{saved_model}: cannot load the SavedModel ({reason}); rerun `dvc repro export`") from None
    predicted = np.concatenate(
        [
            serve(images=tf.constant(images[i : i + batch_size].reshape(-1, 28, 28)))["class_ids"].numpy()
            for i in range(0, len(images), batch_size)
        ]
    )
    errors = int(np.sum(predicted != labels))
    return {"accuracy": round(float(np.mean(predicted == labels)), 6), "errors": errors, "count": len(labels)}
