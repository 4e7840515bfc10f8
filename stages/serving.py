"""The exported model's serving signature, and the check that a saved copy reproduces evaluate.

    python -m stages.serving SAVED_MODEL DATA_DIR   # prints {"accuracy", "errors", "count"} on the test split
"""
import argparse
import json

from stages import cli


def serving_module(model):
    """A tf.Module whose `serve` takes uint8 images [None, 28, 28] and returns probabilities and class ids."""
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self, mlp):
            super().__init__(name="serving")
            self.mlp = mlp

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
        def serve(self, images):
            # A loaded signature does not enforce its input shape; without this, any multiple of 784 pixels passes.
            images = tf.ensure_shape(images, [None, 28, 28])
            logits = self.mlp(self.mlp.inputs(images))
            return {"probabilities": tf.nn.softmax(logits), "class_ids": tf.argmax(logits, axis=1)}

    return Serving(model)


def test_accuracy(saved_model: str, data: str, batch_size: int = 1000) -> dict:
    """Load `saved_model` and score its serving_default signature on the prepared test split."""
    import numpy as np
    import tensorflow as tf

    from stages import records

    images, labels = records.read_split(data, "test")
    try:
        serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    except (OSError, ValueError, KeyError, IndexError, tf.errors.OpError) as exc:  # IndexError: truncated variables
        raise cli.UserError(f"{saved_model}: cannot load the SavedModel ({str(exc).splitlines()[0][:160]}); rerun `dvc repro export`") from None
    predicted = np.concatenate([
        serve(images=tf.constant(images[i : i + batch_size].reshape(-1, 28, 28)))["class_ids"].numpy()
        for i in range(0, len(images), batch_size)
    ])
    errors = int(np.sum(predicted != labels))
    return {"accuracy": round(float(np.mean(predicted == labels)), 6), "errors": errors, "count": len(labels)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Score a SavedModel's serving_default on the prepared test split.")
    parser.add_argument("saved_model")
    parser.add_argument("data")
    args = parser.parse_args(argv)
    cli.import_tensorflow()
    print(json.dumps(test_accuracy(args.saved_model, args.data)))


if __name__ == "__main__":
    cli.run(main)
