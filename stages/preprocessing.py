"""The one preprocessing step, shared by train, evaluate and the exported serving signature."""
import tensorflow as tf

INPUT_SIZE = 28 * 28


def to_model_input(images: tf.Tensor) -> tf.Tensor:
    """uint8 images [B, 28, 28] or [B, 784] -> float32 [B, 784] with pixels scaled to [0, 1]."""
    return tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, INPUT_SIZE])
