"""The custom training loop: tf.data input, a GradientTape step, several steps per tf.function call.

`run()` takes the data as arrays, so tests can inject tiny synthetic data.
"""

import ctypes
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from stages.lib import distribution, optimizers
from stages.lib.cli import UserError
from stages.lib.model import MLP, NUM_CLASSES, RNG_TF, RNG_XLA, predict_logits
from stages.lib.preprocessing import INPUT_SIZE, SIDE, pack_inputs, unpack_inputs


def batches(images, labels, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless stream of shuffled full batches: each epoch a new seeded permutation, partial batch dropped.

    `images`: uint8 images or `model_inputs` [N, 784], as a numpy array or a tensor. Only indices go
    through shuffle/batch; the images stay in one in-memory tensor and are gathered a batch at a time,
    which keeps tf.data's per-element work small.
    """
    images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    return (
        tf.data.Dataset.range(len(labels))
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .repeat()
        .map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)))
        .prefetch(2)
    )


def shift_images(x: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Shift each image [B, 784] by its own random offset of up to `max_shift` pixels, filling with 0."""
    batch = tf.shape(x)[0]
    padded = tf.pad(tf.reshape(x, [-1, SIDE, SIDE]), [[0, 0], [max_shift, max_shift], [max_shift, max_shift]])
    offsets = tf.random.stateless_uniform([batch, 2], seed=seed, maxval=2 * max_shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(SIDE)[None, :]
    cols = offsets[:, 1:] + tf.range(SIDE)[None, :]
    cropped = tf.gather(tf.gather(padded, rows, batch_dims=1), cols, axis=2, batch_dims=1)
    return tf.reshape(cropped, [-1, INPUT_SIZE])


def per_example_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy of each example's logits against its (optionally smoothed) one-hot label."""
    targets = tf.one_hot(labels, NUM_CLASSES)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES
    return tf.nn.softmax_cross_entropy_with_logits(targets, logits)


def softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean cross-entropy of the logits against (optionally smoothed) one-hot labels."""
    return tf.reduce_mean(per_example_cross_entropy(logits, labels, label_smoothing))


SUM = tf.distribute.ReduceOp.SUM


class Trainer(tf.Module):
    """Model + optimizer + the compiled step. `steps(n)` runs n steps in one tf.function call.

    `train_step` is the step as the TF Core guide writes it (tape -> gradients -> update). With one
    device it runs whole, as one (XLA-)compiled function; with several replicas `_replica_step`, beside
    it, runs its two halves and sums the gradients over the replicas between them. The compiled
    functions (`step`, `gradients`, `update`, `steps`) exist whatever the replica count; each is traced
    only when first called.

    Build it under `strategy.scope()`, so the variables are mirrored on every replica. The dataset
    yields (inputs, labels): model inputs computed once per run (`model_inputs`: float32, or packed
    as uint16), or uint8 images, which the step then prepares itself.
    """

    def __init__(
        self,
        model: MLP,
        cfg,
        batch_size: int,
        steps_per_epoch: int,
        dataset: tf.data.Dataset,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(name="trainer")
        self.strategy = strategy or tf.distribute.get_strategy()
        self.model, self.cfg, self.global_batch = model, cfg, batch_size
        self.variables_to_train = list(model.trainable_variables)
        self.optimizer = optimizers.build(cfg, self.variables_to_train)
        self.total_steps = cfg.epochs * steps_per_epoch
        self.warmup_steps = cfg.warmup_epochs * steps_per_epoch
        self.rng_alg = RNG_XLA if cfg.jit_compile else RNG_TF
        # With train.ema_decay, a second MLP holds the moving average of the weights; it is the one
        # validated, kept and saved.
        self.average = None
        if cfg.ema_decay:
            self.average = MLP(model.hidden_units, seed=0, deskew=model.deskew, name="average")
            for a, w in zip(self.average.trainable_variables, self.variables_to_train):
                a.assign(w)  # the average starts at the model's initial weights
        self.eval_model = self.average or model
        replicas = self.strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise UserError(f"train.batch_size = {batch_size} does not split evenly over {replicas} replicas")
        self._iterator = iter(distribution.distribute(self.strategy, dataset) if replicas > 1 else dataset)
        per_replica = batch_size // replicas
        input_dtype = dataset.element_spec[0].dtype  # float32 inputs, or uint8 images
        batch_spec = [tf.TensorSpec([per_replica, INPUT_SIZE], input_dtype), tf.TensorSpec([per_replica], tf.int64)]
        step_spec = [*batch_spec, tf.TensorSpec([2], tf.int64)]  # inputs, labels, seed
        grad_specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.variables_to_train]
        # The step has no tensor-dependent Python control flow, so AutoGraph's source rewrite (~0.9 s of
        # tracing here) is skipped: the graph is the same. `steps` keeps it for its tf.range loop.
        compiled = dict(jit_compile=cfg.jit_compile, autograph=False)
        self.step = tf.function(self.train_step, input_signature=step_spec, **compiled)
        # the all-reduce between gradients and update cannot be compiled: replicas run two functions
        self.gradients = tf.function(self._gradients, input_signature=step_spec, **compiled)
        self.update = tf.function(self._update, input_signature=[grad_specs], **compiled)
        self.steps = tf.function(self._steps, input_signature=[tf.TensorSpec([], tf.int32)])

    def train_step(self, inputs, labels, seed, apply=True):
        """One device: tape -> gradients -> update. Returns (loss, correct). With apply=False, the first
        half of a replica's step: it returns the gradients as well, which `_replica_step` sums first."""
        x = self._training_inputs(inputs, seed)
        with tf.GradientTape() as tape:
            logits = self.model(x, self.cfg.dropout_input, self.cfg.dropout_hidden, seed=seed, rng_alg=self.rng_alg)
            loss = self._loss(logits, labels, self.cfg.label_smoothing)
        grads = tape.gradient(loss, self.variables_to_train)
        report = self._report(logits, labels, loss)
        if not apply:
            return (*report, grads)
        self._update(grads)
        return report

    def _replica_step(self, inputs, labels):
        """The step under tf.distribute: the whole compiled step on one device; with several replicas,
        each computes gradients on its slice of the global batch, the gradients are summed across
        replicas, and every replica applies the same update to its own copy of the variables."""
        context = tf.distribute.get_replica_context()
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int64), self.optimizer.iterations + 1])  # fresh per step
        if context.num_replicas_in_sync == 1:
            return self.step(inputs, labels, seed)
        # each replica its own dropout masks and shifts
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
        loss, correct, grads = self.gradients(inputs, labels, seed)
        # Our optimizer assigns to each replica's copy itself (in replica context an assignment reaches
        # only the local copy), so every replica must see the same, summed gradients.
        grads = context.all_reduce(SUM, grads)
        self.update(grads)
        return loss, correct

    def _gradients(self, inputs, labels, seed):
        return self.train_step(inputs, labels, seed, apply=False)

    def _training_inputs(self, inputs, seed):
        """The model's inputs for this batch (prepared here if the dataset holds uint8 images, unpacked if
        uint16 from `model_inputs`), shifted with train.augment_shift."""
        if inputs.dtype == tf.uint8:
            x = self.model.inputs(inputs)
        else:
            x = unpack_inputs(inputs) if inputs.dtype == tf.uint16 else inputs
        if self.cfg.augment_shift:
            x = shift_images(x, self.cfg.augment_shift, tf.random.experimental.stateless_fold_in(seed, 1_000_003))
        return x

    def _loss(self, logits, labels, label_smoothing=0.0):
        """This replica's share of the global batch's mean cross-entropy."""
        per_example = per_example_cross_entropy(logits, labels, label_smoothing)
        return tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)

    def _report(self, logits, labels, loss):
        """(loss, correct predictions): the plain cross-entropy, comparable with the validation loss."""
        if self.cfg.label_smoothing:
            loss = self._loss(logits, labels)
        return loss, tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == labels, tf.int64))

    def _update(self, grads):
        """Optimizer update of this replica's variables (and the max-norm constraint)."""
        cfg = self.cfg
        step = self.optimizer.iterations + 1
        lr = optimizers.learning_rate(step, self.total_steps, self.warmup_steps, cfg.learning_rate, cfg.lr_schedule)
        self.optimizer.apply(grads, self.variables_to_train, lr)
        if cfg.max_norm:
            self.model.apply_max_norm(cfg.max_norm)
        if self.average:
            self._update_average(step)

    def _update_average(self, step):
        """a <- d a + (1 - d) w, with d = min(ema_decay, (1 + t) / (10 + t)) so early steps are not
        dominated by the initial weights (the warm-up of tf.train.ExponentialMovingAverage)."""
        t = tf.cast(step, tf.float32)
        decay = tf.minimum(self.cfg.ema_decay, (1.0 + t) / (10.0 + t))
        for a, w in zip(self.average.trainable_variables, self.variables_to_train):
            a.assign(decay * a + (1.0 - decay) * w)

    def _steps(self, n):
        # Batches are fetched here, outside the (possibly XLA-compiled) step: XLA cannot compile iterator ops.
        losses = tf.TensorArray(tf.float32, size=n)
        correct = tf.constant(0, tf.int64)
        for i in tf.range(n):
            inputs, labels = next(self._iterator)
            loss, batch_correct = self.strategy.run(self._replica_step, args=(inputs, labels))
            losses = losses.write(i, self.strategy.reduce(SUM, loss, axis=None))
            correct += self.strategy.reduce(SUM, batch_correct, axis=None)
        return losses.stack(), correct


@dataclass
class Result:
    model: MLP
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)


def evaluate_arrays(model: MLP, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on uint8 images [N, 784]."""
    return _loss_and_accuracy(predict_logits(model, images), labels)


def input_function(model: MLP, jit_compile: bool = False):
    """`model.inputs` (uint8 images [B, 784] -> float32 inputs) as one compiled function, for model_inputs.
    XLA deskews 3x faster than TensorFlow's own kernels here (the two differ in the last bits)."""
    spec = [tf.TensorSpec([None, INPUT_SIZE], tf.uint8)]
    return tf.function(model.inputs, input_signature=spec, jit_compile=jit_compile, autograph=False)


def model_inputs(prepare, images: np.ndarray, batch_size: int = 2500, packed: bool = False) -> tf.Tensor:
    """The model's float32 inputs [N, 784] for uint8 images [N, 784] (`prepare` = input_function(model),
    in batches), as one tensor; with `packed`, as uint16 fixed point (`preprocessing.pack_inputs`), which
    the step unpacks. Built from TensorFlow's own tensors: one made by tf.constant from a numpy array
    holds twice the array's memory (TensorFlow 2.21; 150 MB, not 75, for the packed training inputs)."""
    encode = pack_inputs if packed else (lambda x: x)
    parts = [encode(prepare(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    if not parts:
        return tf.zeros([0, INPUT_SIZE], tf.uint16 if packed else tf.float32)
    return tf.concat(parts, axis=0)


def inference(model: MLP):
    """The model's logits for prepared inputs [B, 784] (`model_inputs`), as one compiled function."""
    spec = [tf.TensorSpec([None, INPUT_SIZE], tf.float32)]
    return tf.function(lambda x: model(x), input_signature=spec, autograph=False)


def evaluate_inputs(logits_of, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `logits_of` (`inference(model)`) on prepared inputs [N, 784]."""
    parts = [logits_of(inputs[i : i + batch_size]).numpy() for i in range(0, len(labels), batch_size)]
    return _loss_and_accuracy(np.concatenate(parts) if parts else np.zeros([0, NUM_CLASSES], np.float32), labels)


def _loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    loss = float(softmax_cross_entropy(logits, labels))
    return loss, float(np.mean(np.argmax(logits, 1) == labels))


_DIVERGED_HINT = "lower train.learning_rate (or add warm-up); no checkpoint written"
# Guessing uniformly costs ln(10) = 2.3; a mean loss this large means the weights have blown up.
EXPLODED_LOSS = 1e3


def _check_losses(losses: np.ndarray, first_step: int, epoch: int) -> None:
    bad = np.flatnonzero(~(np.abs(losses) < EXPLODED_LOSS))  # also catches nan and inf
    if bad.size:
        raise UserError(
            f"training diverged: loss is {losses[bad[0]]} at epoch {epoch}, step {first_step + bad[0]}; "
            + _DIVERGED_HINT
        )


def _check_weights(variables, epoch: int) -> None:
    for v in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            raise UserError(f"training diverged: non-finite values in {v.name} at epoch {epoch}; {_DIVERGED_HINT}")


# glibc keeps freed memory in its free lists, counted in the process's resident memory until handed
# back: deskewing 50,000 images (and its XLA compilation) leaves ~100 MB there, the first epoch's
# compilations ~60 MB (benchmarks/RESULTS.md). Without glibc (no malloc_trim): nothing to do.
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def return_free_memory() -> None:
    """Give the C heap's free pages back to the operating system (glibc's malloc_trim)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def run(train, val, model_cfg, train_cfg, on_epoch=lambda record: None, progress=None, strategy=None) -> Result:
    """Train on `train` = (uint8 images [N, 784], labels), keep the best epoch by accuracy on `val`.

    `on_epoch(record)` receives each epoch's metrics; `progress(steps_done)` is called after every call;
    `strategy` (tf.distribute, default: one device) places the replicas.
    """
    strategy = strategy or tf.distribute.get_strategy()
    train_images, train_labels = train
    steps_per_epoch = len(train_labels) // train_cfg.batch_size
    with strategy.scope():
        model = MLP(model_cfg.hidden_units, seed=train_cfg.seed, deskew=model_cfg.deskew)
    # Deskewing is deterministic: done once per run, not in every step and epoch. The training inputs are
    # kept as 16-bit fixed point (float32 would add 157 MB to the stage's peak memory); plain pixels stay
    # uint8, scaled in the step.
    prepare = input_function(model, train_cfg.jit_compile)  # one function (one compilation) for both splits
    inputs = model_inputs(prepare, train_images, packed=True) if model.deskew else train_images
    dataset = batches(inputs, train_labels, train_cfg.batch_size, train_cfg.seed)
    val_inputs, val_labels = model_inputs(prepare, val[0]), val[1]
    return_free_memory()  # what deskewing and its compilation left behind
    with strategy.scope():
        trainer = Trainer(model, train_cfg, train_cfg.batch_size, steps_per_epoch, dataset, strategy)
    model = trainer.eval_model
    validate = inference(model)
    best = [tf.Variable(v, trainable=False) for v in model.trainable_variables]
    result = Result(model, best_epoch=0, best_val_accuracy=-1.0)

    for epoch in range(1, train_cfg.epochs + 1):
        start = time.perf_counter()
        losses, correct, done = [], 0, 0
        while done < steps_per_epoch:
            n = min(train_cfg.steps_per_call, steps_per_epoch - done)
            call_losses, call_correct = trainer.steps(tf.constant(n, tf.int32))
            call_losses = call_losses.numpy()
            _check_losses(call_losses, (epoch - 1) * steps_per_epoch + done + 1, epoch)
            losses.append(call_losses)
            correct += int(call_correct)
            done += n
            if progress:
                progress(n)
        _check_weights(trainer.variables_to_train, epoch)
        val_loss, val_accuracy = evaluate_inputs(validate, val_inputs, val_labels)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(np.concatenate(losses))),
            "accuracy": correct / (steps_per_epoch * train_cfg.batch_size),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "learning_rate": float(
                optimizers.learning_rate(
                    trainer.optimizer.iterations,
                    trainer.total_steps,
                    trainer.warmup_steps,
                    train_cfg.learning_rate,
                    train_cfg.lr_schedule,
                )
            ),
            "seconds": time.perf_counter() - start,
        }
        result.history.append(record)
        if epoch == 1:
            return_free_memory()  # what the step's and the validation's compilations left behind
        if val_accuracy > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, val_accuracy
            for snapshot, v in zip(best, model.trainable_variables):
                snapshot.assign(v)
        on_epoch(record)
        if train_cfg.patience and epoch - result.best_epoch >= train_cfg.patience:
            break  # early stopping: the learning-rate schedule still spans train.epochs

    for snapshot, v in zip(best, model.trainable_variables):
        v.assign(snapshot)
    return result
