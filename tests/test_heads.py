import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from keras_transfer.heads import fit_probe


@pytest.mark.parametrize("n", [40, 300])  # fewer images than features (fitted in their span), and more
def test_the_probe_is_scikit_learns_logistic_regression_on_scaled_features(n):
    # the same optimum, to the solver's tolerance (logits of a few units; a wrong mapping is off by whole units)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    features = np.abs(rng.normal(size=(n, 200)) + labels[:, None] * rng.normal(size=200)).astype(np.float32)
    kernel, bias = fit_probe(features, labels, 5)
    scale = np.mean(np.linalg.norm(features, axis=1))
    reference = LogisticRegression(C=10.0, max_iter=2000).fit(features / scale, labels)
    assert kernel.shape == (200, 5) and bias[4] == -10.0  # class 4 has no image: never predicted
    np.testing.assert_allclose(
        features @ kernel[:, :4] + bias[:4], reference.decision_function(features / scale), atol=0.02
    )


def test_the_multi_label_probe_fits_each_label_in_the_span_of_few_images():
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(30, 100))).astype(np.float32)
    labels = np.stack([features[:, 0] > np.median(features[:, 0]), np.ones(30, bool)], axis=1).astype(np.float32)
    kernel, bias = fit_probe(features, labels, 2, multi_label=True)
    scale = np.mean(np.linalg.norm(features, axis=1))
    reference = LogisticRegression(C=10.0, max_iter=2000).fit(features / scale, labels[:, 0])
    np.testing.assert_allclose(
        features @ kernel[:, 0] + bias[0], reference.decision_function(features / scale), atol=0.02
    )
    assert bias[1] == 10.0 and not kernel[:, 1].any()  # a label on every image
