"""What the benchmarks share: timing contenders side by side, and a compiled part run once per step."""

import statistics
import time


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender (a no-argument callable): one warm-up call each (tracing,
    compilation, first data pass), then `rounds` rounds that call every contender in turn, so a noisy
    machine affects all of them alike."""
    for run in contenders.values():
        run()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def epoch_loop(part, steps: int, jit_compile: bool):
    """A callable running `part(step)` (returning a float scalar) for step = 0 .. steps-1 inside one
    tf.function call, `part` compiled with XLA or not, as the training loop calls its step."""
    import tensorflow as tf

    compiled = tf.function(part, jit_compile=jit_compile)

    @tf.function
    def run():
        total = tf.constant(0.0)
        for step in tf.range(steps, dtype=tf.int64):
            total += compiled(step)
        return total

    return lambda: run().numpy()


def print_medians(times: dict[str, list[float]], unit: str = "s/epoch", digits: int = 3) -> None:
    """One line per contender: its median and every round."""
    width = max(map(len, times))
    for name, t in times.items():
        rounds = ", ".join(f"{s:.{digits}f}" for s in t)
        print(f"{name:<{width}} {statistics.median(t):7.{digits}f} {unit}  (rounds: {rounds})")


def trainer_epoch(trainer, steps: int, steps_per_call: int):
    """A callable running one epoch of `steps` steps of a stages.lib.training.Trainer, `steps_per_call`
    steps per call, as the train stage does."""
    import tensorflow as tf

    def epoch():
        done = 0
        while done < steps:
            n = min(steps_per_call, steps - done)
            trainer.steps(tf.constant(n, tf.int32))[0].numpy()
            done += n

    return epoch
