"""Optimizers written on raw variables. State (moments, step counter) lives in tf.Variables, so it is
tracked by tf.train.Checkpoint and updates correctly inside tf.function (a Python counter would be
frozen at trace time). Formulas follow keras.optimizers, which the tests compare against.
"""

import tensorflow as tf


class Optimizer(tf.Module):
    def __init__(self, variables, weight_decay: float = 0.0, name=None):
        super().__init__(name=name)
        self.weight_decay = weight_decay
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._slots = {}

    def _slot(self, variables, slot: str):
        return [tf.Variable(tf.zeros_like(v), trainable=False, name=f"{slot}_{i}") for i, v in enumerate(variables)]

    def apply(self, grads, variables, learning_rate) -> None:
        """One update of every variable from its gradient, at the given learning rate."""
        lr = tf.cast(learning_rate, tf.float32)
        self.iterations.assign_add(1)
        for index, (g, v) in enumerate(zip(grads, variables)):
            if self.weight_decay:
                v.assign_sub(v * self.weight_decay * lr)  # decoupled (AdamW-style), bias included
            self._update(index, g, v, lr)

    def _update(self, index, g, v, lr):
        raise NotImplementedError


class Adam(Optimizer):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  w <- w - lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v)+eps)."""

    def __init__(self, variables, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
        super().__init__(variables, weight_decay, name="adam")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = self._slot(variables, "m")
        self.v = self._slot(variables, "v")

    def _update(self, index, g, v, lr):
        m, s = self.m[index], self.v[index]
        t = tf.cast(self.iterations, tf.float32)
        m.assign_add((g - m) * (1 - self.beta_1))
        s.assign_add((tf.square(g) - s) * (1 - self.beta_2))
        step_size = lr * tf.sqrt(1 - tf.pow(self.beta_2, t)) / (1 - tf.pow(self.beta_1, t))
        v.assign_sub(step_size * m / (tf.sqrt(s) + self.epsilon))


class SGD(Optimizer):
    """Momentum SGD: u <- mu u - lr g; w <- w + u (or, Nesterov, w <- w + mu u - lr g)."""

    def __init__(self, variables, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(variables, weight_decay, name="sgd")
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = self._slot(variables, "velocity") if momentum else []

    def _update(self, index, g, v, lr):
        if not self.momentum:
            v.assign_sub(lr * g)
            return
        u = self.velocity[index]
        u.assign(self.momentum * u - lr * g)
        v.assign_add(self.momentum * u - lr * g if self.nesterov else u)


def build(cfg, variables) -> Optimizer:
    """The optimizer named by train.optimizer, configured from the train params."""
    if cfg.optimizer == "adam":
        return Adam(variables, weight_decay=cfg.weight_decay)
    return SGD(variables, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)


def learning_rate(step, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> tf.Tensor:
    """Learning rate at (1-based) `step`: linear warm-up to `peak`, then constant or cosine decay to 0."""
    step = tf.cast(step, tf.float32)
    warm = tf.minimum(1.0, step / warmup_steps) if warmup_steps else tf.constant(1.0)
    if schedule == "cosine":
        progress = tf.clip_by_value((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0, 1.0)
        return peak * warm * 0.5 * (1.0 + tf.cos(3.141592653589793 * progress))
    return peak * warm
