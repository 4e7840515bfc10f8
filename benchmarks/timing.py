"""What the benchmarks share: timing contenders side by side, and a compiled part run once per step."""
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
