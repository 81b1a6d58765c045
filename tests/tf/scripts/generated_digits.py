"""Generated 28x28 digits for the adapted Horovod examples here (no download)."""
import numpy as np


def generated_mnist(n, seed):
    """Ten fixed 28x28 templates plus noise, as uint8 images and labels (MNIST's types):
    a dataset a small CNN learns in seconds."""
    templates = np.random.default_rng(0).random((10, 28, 28)) > 0.7
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = templates[labels] * 200.0 + rng.normal(0.0, 60.0, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)
