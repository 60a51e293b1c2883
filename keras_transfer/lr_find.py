"""The learning-rate finder: a range test per stage policy (fastai's valley and steepest-descent suggestions),
leaving the model bit-identical."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from keras_transfer.compat import flatten_layers
from keras_transfer.files import atomic_path
from keras_transfer.models import model_view
from keras_transfer.objectives import check_labels, is_number, make_optimizer, objective
from keras_transfer.policies import set_trainable

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LearningRateFinding:
    """What `find_learning_rate` measured: the rates tried, the smoothed loss at each, and two suggestions."""

    learning_rates: list
    losses: list  # exponentially smoothed (0.98, debiased, as fastai's), one per rate
    suggestion: float  # fastai's "valley" rule
    steepest: float  # the rate where the smoothed loss falls fastest (steepest descent)
    policy: str
    stopped_early: bool  # the loss diverged (4x its minimum) before the last step
    rule: str = "valley"

    def __str__(self):
        return (
            f"learning rates for policy {self.policy!r}: {self.suggestion:.2e} (valley), {self.steepest:.2e} "
            f"(steepest descent); {len(self.learning_rates)} steps{', stopped: the loss diverged' * self.stopped_early}"
        )


def find_learning_rate(
    model, train, *, unfreeze="frozen", min_lr=1e-7, max_lr=1.0, steps=100, optimizer="adam", plot_path=None
):
    """The learning-rate range test (Smith 2017; fastai's `lr_find`): one optimizer step per batch with the rate
    growing exponentially from `min_lr` to `max_lr`, stopped when the smoothed loss exceeds 4x its minimum.

    It trains what the stage the rate is for trains: `unfreeze="frozen"` (the head: stage 1's `learning_rate`) or
    a stage-2 policy such as `"stages:1"` (`fine_tune_learning_rate`), with a fresh optimizer of its own; afterwards
    the model's weights (BatchNorm statistics too), `trainable` flags and compiled optimizer are exactly as before.

    Args:
        model: a model from `build_model`.
        train: `(images, labels)` batches (repeated when shorter than `steps`).
        unfreeze: the `set_trainable` policy of the stage the rate is for.
        min_lr, max_lr: the range, `0 < min_lr < max_lr`.
        steps: optimizer steps (at least 5).
        optimizer: one of `TrainingOptions`' optimizers.
        plot_path: where to save the loss-vs-rate plot (`lr_find.png`), with both suggestions marked.

    Returns:
        A `LearningRateFinding`: `learning_rates`, smoothed `losses`, `suggestion` (fastai's valley rule: the
        middle of the longest stretch of falling loss) and `steepest`.

    Raises:
        ValueError: for `min_lr >= max_lr`, a rate <= 0, fewer than 5 steps or an unknown policy.
    """
    if not (is_number(min_lr) and is_number(max_lr) and 0 < min_lr < max_lr):
        raise ValueError(f"Need 0 < min_lr < max_lr. Received: min_lr={min_lr!r}, max_lr={max_lr!r}")
    if not isinstance(steps, int) or steps < 5:
        raise ValueError(f"steps must be an integer >= 5. Received: steps={steps!r}")
    layers = [model, *flatten_layers(model)]
    saved = [np.array(v) for v in model.variables], [(layer, layer.trainable) for layer in layers]
    try:
        set_trainable(model, unfreeze)
        rates, losses = _range_test(model, train, min_lr, max_lr, steps, optimizer)
    finally:
        for layer, trainable in saved[1]:
            layer.trainable = trainable
        for variable, value in zip(model.variables, saved[0]):
            variable.assign(value)
    smoothed, stopped = _smoothed(losses)
    stopped = stopped or len(losses) < steps
    rates = rates[: len(smoothed)]
    # as fastai does, the first and last few points (the average still warming up, the blow-up) are not suggested
    window = slice(len(rates) // 10, len(rates) - len(rates) // 20) if len(rates) >= 10 else slice(None)
    suggestions = _valley(rates[window], smoothed[window]), _steepest(rates[window], smoothed[window])
    finding = LearningRateFinding(rates, smoothed, *suggestions, unfreeze, stopped)
    if plot_path:
        plot_findings([finding], plot_path)
    logger.debug("%s", finding)
    return finding


def _range_test(model, train, min_lr, max_lr, steps, optimizer_name):
    """The raw loss of each step at rates `min_lr * (max_lr / min_lr) ** (i / (steps - 1))`."""
    view = model_view(model)
    check_labels(view, train)
    loss_fn, _, prepare = objective(view)
    rates = [float(min_lr * (max_lr / min_lr) ** (i / (steps - 1))) for i in range(steps)]
    optimizer = make_optimizer(optimizer_name, rates[0])  # a float: Keras keeps it in a variable, set per step
    variables = model.trainable_variables

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses, best = [], np.inf
    for lr, (x, y) in zip(rates, prepare(train).repeat()):
        optimizer.learning_rate = lr
        losses.append(float(step(x, y)))
        best = min(best, losses[-1])
        if not np.isfinite(losses[-1]) or losses[-1] > 4 * best:
            break
    return rates, losses


def _smoothed(losses, beta=0.98):
    """fastai's debiased exponential moving average, cut where it first exceeds 4x its minimum (or is NaN)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
        if not np.isfinite(out[-1]) or out[-1] > 4 * min(out):
            return out[:-1] or out, True
    return out, False


def _valley(rates, losses):
    """fastai's valley rule: the longest decreasing subsequence of the losses, and the rate at `start + len / 3 +
    len / 6` into it (half-way between its first and second thirds)."""
    n = len(losses)
    longest, end = [1] * n, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end]  # as fastai counts it
    sections = (end - start) / 3
    return rates[min(start + int(sections) + int(sections / 2), n - 1)]


def _steepest(rates, losses):
    if len(losses) < 3:
        return rates[0]
    slopes = np.gradient(np.asarray(losses), np.log(np.asarray(rates)))
    return rates[int(np.argmin(slopes))]


def plot_findings(findings, path):
    """Saves the smoothed loss against the rate of each `LearningRateFinding`, both suggestions marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for finding in findings:
        (line,) = ax.plot(finding.learning_rates, finding.losses, label=f"policy {finding.policy!r}")
        for rate, style, name in ((finding.suggestion, "o", "valley"), (finding.steepest, "s", "steepest")):
            loss = finding.losses[finding.learning_rates.index(rate)]
            ax.plot([rate], [loss], style, color=line.get_color(), label=f"  {name} {rate:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
