"""mnist-mlp: DVC stages turning MNIST into a TensorFlow SavedModel (run as `python -m stages.<name>`)."""
