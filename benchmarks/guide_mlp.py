"""The TF Core MLP guide's whole process (../shared/seeds/tf-core-mlp-guide.txt), written the way the guide
writes it, as the baseline our train stage is compared with. Run by hand from the repo root:

    python -m benchmarks.guide_mlp --data data/prepared

Deviations from the guide, each one needed to run it here or to make the comparison fair:
- Data: the prepared TFRecords (data/prepared: the same 50,000 train / 10,000 validation / 10,000 test
  images the stages use), read with stages.lib.records, instead of `tfds.load("mnist")` (no network
  here; the guide's split is also 50,000 / 10,000 / 10,000). Pixels as the guide preprocesses them
  (flattened, /255), batched at 128 with `tf.data`; the training split is shuffled each epoch
  (`shuffle(50_000, seed=seed)`), which the guide's tfds pipeline does not do.
- `train_step` and `val_step` are wrapped in `tf.function` (the guide runs them eagerly; the issue's
  comparison is with the step in `tf.function`).
- Adam: the guide's class, with its two slot lists filled (`append`, lost from the guide's listing) and
  its step counter `t` a `tf.Variable`: the guide's Python float is frozen at trace time inside
  `tf.function`, so its bias correction would never advance.
- Seeds: `xavier_init` draws from `tf.random.uniform(..., seed=22)` as the guide does; the global seed
  is set (`tf.random.set_seed(seed)`, `--seed`, default 0) so a run is repeatable.
- Epoch lines are printed as one JSON object each (elapsed seconds since the process started, validation
  and, with --test-each-epoch, test accuracy of that epoch's weights; the test pass is timed apart and left
  out of the elapsed time) for benchmarks/time_to_accuracy.py; no plots, no export (the guide's
  ExportModule and its saved-model reload are not part of the training comparison).
"""

import argparse
import json
import os
import time

START = time.time()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from stages.lib import records  # noqa: E402


def xavier_init(shape):
    # Computes the xavier initialization values for a weight matrix
    in_dim, out_dim = shape
    xavier_lim = tf.sqrt(6.0) / tf.sqrt(tf.cast(in_dim + out_dim, tf.float32))
    weight_vals = tf.random.uniform(shape=(in_dim, out_dim), minval=-xavier_lim, maxval=xavier_lim, seed=22)
    return weight_vals


class DenseLayer(tf.Module):
    def __init__(self, out_dim, weight_init=xavier_init, activation=tf.identity):
        # Initialize the dimensions and activation functions
        self.out_dim = out_dim
        self.weight_init = weight_init
        self.activation = activation
        self.built = False

    def __call__(self, x):
        if not self.built:
            # Infer the input dimension based on first call
            self.in_dim = x.shape[1]
            # Initialize the weights and biases
            self.w = tf.Variable(self.weight_init(shape=(self.in_dim, self.out_dim)))
            self.b = tf.Variable(tf.zeros(shape=(self.out_dim,)))
            self.built = True
        # Compute the forward pass
        z = tf.add(tf.matmul(x, self.w), self.b)
        return self.activation(z)


class MLP(tf.Module):
    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x, preds=False):
        # Execute the model's layers sequentially
        for layer in self.layers:
            x = layer(x)
        return x


def cross_entropy_loss(y_pred, y):
    # Compute cross entropy loss with a sparse operation
    sparse_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=y_pred)
    return tf.reduce_mean(sparse_ce)


def accuracy(y_pred, y):
    # Compute accuracy after extracting class predictions
    class_preds = tf.argmax(tf.nn.softmax(y_pred), axis=1)
    is_equal = tf.equal(y, class_preds)
    return tf.reduce_mean(tf.cast(is_equal, tf.float32))


class Adam:
    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, ep=1e-7):
        # Initialize optimizer parameters and variable slots
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.learning_rate = learning_rate
        self.ep = ep
        self.t = tf.Variable(1.0)  # deviation: a Variable, so it advances inside tf.function
        self.v_dvar, self.s_dvar = [], []
        self.built = False

    def apply_gradients(self, grads, vars):
        # Initialize variables on the first call
        if not self.built:
            for var in vars:
                v = tf.Variable(tf.zeros(shape=var.shape))
                s = tf.Variable(tf.zeros(shape=var.shape))
                self.v_dvar.append(v)
                self.s_dvar.append(s)
            self.built = True
        # Update the model variables given their gradients
        for i, (d_var, var) in enumerate(zip(grads, vars)):
            self.v_dvar[i].assign(self.beta_1 * self.v_dvar[i] + (1 - self.beta_1) * d_var)
            self.s_dvar[i].assign(self.beta_2 * self.s_dvar[i] + (1 - self.beta_2) * tf.square(d_var))
            v_dvar_bc = self.v_dvar[i] / (1 - (self.beta_1**self.t))
            s_dvar_bc = self.s_dvar[i] / (1 - (self.beta_2**self.t))
            var.assign_sub(self.learning_rate * (v_dvar_bc / (tf.sqrt(s_dvar_bc) + self.ep)))
        self.t.assign_add(1.0)


@tf.function
def train_step(x_batch, y_batch, loss, acc, model, optimizer):
    # Update the model state given a batch of data
    with tf.GradientTape() as tape:
        y_pred = model(x_batch)
        batch_loss = loss(y_pred, y_batch)
    batch_acc = acc(y_pred, y_batch)
    grads = tape.gradient(batch_loss, model.variables)
    optimizer.apply_gradients(grads, model.variables)
    return batch_loss, batch_acc


@tf.function
def val_step(x_batch, y_batch, loss, acc, model):
    # Evaluate the model on given a batch of validation data
    y_pred = model(x_batch)
    batch_loss = loss(y_pred, y_batch)
    batch_acc = acc(y_pred, y_batch)
    return batch_loss, batch_acc


def train_model(mlp, train_data, val_data, loss, acc, optimizer, epochs, test_data=None):
    # Initialize data structures
    train_losses, train_accs = [], []
    val_losses, val_accs = [], []
    excluded = 0.0  # seconds spent on the (optional) per-epoch test pass, left out of `elapsed`

    # Format training loop and begin training
    for epoch in range(epochs):
        batch_losses_train, batch_accs_train = [], []
        batch_losses_val, batch_accs_val = [], []

        # Iterate over the training data
        for x_batch, y_batch in train_data:
            # Compute gradients and update the model's parameters
            batch_loss, batch_acc = train_step(x_batch, y_batch, loss, acc, mlp, optimizer)
            # Keep track of batch-level training performance
            batch_losses_train.append(batch_loss)
            batch_accs_train.append(batch_acc)

        # Iterate over the validation data
        for x_batch, y_batch in val_data:
            batch_loss, batch_acc = val_step(x_batch, y_batch, loss, acc, mlp)
            batch_losses_val.append(batch_loss)
            batch_accs_val.append(batch_acc)

        # Keep track of epoch-level model performance
        train_loss, train_acc = tf.reduce_mean(batch_losses_train), tf.reduce_mean(batch_accs_train)
        val_loss, val_acc = tf.reduce_mean(batch_losses_val), tf.reduce_mean(batch_accs_val)
        train_losses.append(train_loss)
        train_accs.append(train_acc)
        val_losses.append(val_loss)
        val_accs.append(val_acc)
        # wall: the clock minus the test passes (time_to_accuracy subtracts the launch time)
        line = {"epoch": epoch + 1, "wall": time.time() - excluded, "val": float(val_acc)}
        if test_data is not None:
            begin = time.time()
            line["test"] = float(tf.reduce_mean([val_step(x, y, loss, acc, mlp)[1] for x, y in test_data]))
            excluded += time.time() - begin
        line["elapsed"] = line["wall"] - START
        print(json.dumps(line), flush=True)
    return train_losses, train_accs, val_losses, val_accs


def preprocess(x, y):
    # Reshaping the data
    x = tf.reshape(x, shape=[-1, 784])
    # Rescaling the data
    x = x / 255
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[700, 500])
    parser.add_argument("--seed", type=int, default=0, help="global seed, and the seed of the shuffle")
    parser.add_argument("--test-each-epoch", action="store_true")
    args = parser.parse_args()
    tf.random.set_seed(args.seed)

    def split(name, shuffle=False):
        images, labels = records.read_split(args.data, name)
        data = tf.data.Dataset.from_tensor_slices((tf.cast(images, tf.float32), labels))
        if shuffle:
            data = data.shuffle(len(labels), seed=args.seed)
        return data.batch(128).map(preprocess)

    train_data, val_data, test_data = split("train", shuffle=True), split("val"), split("test")
    mlp_model = MLP([DenseLayer(out_dim=h, activation=tf.nn.relu) for h in args.hidden] + [DenseLayer(out_dim=10)])
    train_model(
        mlp_model,
        train_data,
        val_data,
        loss=cross_entropy_loss,
        acc=accuracy,
        optimizer=Adam(),
        epochs=args.epochs,
        test_data=test_data if args.test_each_epoch else None,
    )
    test_acc = float(tf.reduce_mean([accuracy(mlp_model(x), y) for x, y in test_data]))
    print(f"guide_mlp: test accuracy {test_acc:.4f}, {time.time() - START:.1f} s since process start")


if __name__ == "__main__":
    main()
