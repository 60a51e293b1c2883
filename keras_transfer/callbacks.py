"""The callbacks shared by fine-tuning and pretraining: one log line per epoch, and epochs grouped into passes
for tiny training sets."""

from __future__ import annotations

import logging
import time

import keras

logger = logging.getLogger(__name__)


MIN_GROUPS = 10  # a stage run in groups of epochs keeps at least this many validations (see `_fit`)


def passes_per_epoch(batches, epochs, min_steps=20):
    """How many passes over the training set one Keras epoch makes: the largest divisor of `epochs` that keeps
    the passes' batches within about `min_steps` and leaves at least `MIN_GROUPS` groups (so a stage
    of fewer than 20 epochs keeps one validation per epoch)."""
    most = min(-(-int(min_steps) // max(batches, 1)), epochs // MIN_GROUPS)
    return max(k for k in range(1, max(most, 1) + 1) if epochs % k == 0)


class InUserEpochs(keras.callbacks.CallbackList):
    """The callbacks of a stage whose Keras epochs each make `passes` passes over the training set, shown the
    epochs the user asked for: Keras epoch `first_epoch + g` is group g of the stage, epochs
    `first_epoch + g * passes` (at its beginning) to `first_epoch + (g + 1) * passes - 1` (at its end)."""

    def __init__(self, callbacks, first_epoch, passes, verbose):
        self.first_epoch, self.passes, self.verbose = first_epoch, passes, verbose
        super().__init__(callbacks)

    def _epoch(self, epoch, end):
        return self.first_epoch + (epoch - self.first_epoch + end) * self.passes - end

    def set_params(self, params):
        if params and "epochs" in params:
            params = {**params, "epochs": self._epoch(params["epochs"] - 1, True) + 1, "verbose": self.verbose}
        super().set_params(params)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(self._epoch(epoch, False), logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(self._epoch(epoch, True), logs)


class EpochLines(keras.callbacks.Callback):
    """Logs one line per epoch, `stage` and the metrics in it; in a stage longer than 10 epochs, about ten lines:
    the epochs that reach a multiple of `ceil(epochs / 10)`, and the last (a 200-epoch few-shot stage would
    otherwise print 200 lines)."""

    def __init__(self, stage, first_epoch=0, total_epochs=None):
        super().__init__()
        self.stage, self.first_epoch, self.total_epochs = stage, first_epoch, total_epochs

    def on_train_begin(self, logs=None):
        length = self.params["epochs"] - self.first_epoch
        self.every = -(-length // 10) if length > 10 else 1
        self.shown = 0  # epochs of this stage up to the last line

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        done, last = epoch + 1 - self.first_epoch, epoch + 1 == self.params["epochs"]
        if done // self.every == self.shown // self.every and not last:
            return
        self.shown = done
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        total = self.total_epochs or self.params["epochs"]
        logger.info(
            "epoch %*d/%d  %-4s  %s  (%.1f s)",
            len(str(total)),
            epoch + 1,
            total,
            self.stage,
            metrics,
            time.perf_counter() - self.started,
        )


def epoch_lines(verbose, stage, first_epoch, total_epochs):
    return [EpochLines(stage, first_epoch, total_epochs)] if verbose == "lines" else []
