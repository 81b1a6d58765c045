"""From training to serving: train the digits CNN, then serve it over HTTP with batching.

    python examples/serve_digits.py [--epochs 4] [--port 8000] [--requests 64]

Trains examples/train_digits.py's CNN data-parallel on 2 workers, loads the
best checkpoint into a deployment of 2 replicas whose ``@serve.batch`` method
runs one forward pass per batch of concurrent requests, then sends test
images over HTTP (JSON: an 8x8 image as a list of lists) and prints the
predictions with their latency and the accuracy over the requests sent.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import time

import cloudpickle
import httpx
import numpy as np
import torch

import shoal
import train_digits
from shoal import serve

# the replicas cannot import this example's modules: ship the model's code with it
cloudpickle.register_pickle_by_value(train_digits)


@serve.deployment(num_replicas=2, max_ongoing_requests=32)
class DigitsClassifier:
    def __init__(self, state_dict):
        torch.set_num_threads(1)
        self.model = train_digits.DigitsCNN()
        self.model.load_state_dict(state_dict)
        self.model.eval()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, images):
        with torch.no_grad():
            x = torch.tensor(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 8, 8)
            logits = self.model(x)
        return [{"digit": int(k), "confidence": float(p)}
                for p, k in zip(*torch.softmax(logits, 1).max(1))]

    async def __call__(self, request):
        image = (await request.json())["image"]
        if np.asarray(image).shape != (8, 8):
            from starlette.exceptions import HTTPException
            raise HTTPException(422, "send {'image': an 8x8 list of lists of floats in [0, 1]}")
        return await self.predict(image)


def main(epochs: int = 4, port: int = 8000, requests: int = 64) -> float:
    """Train, serve, query; returns the accuracy over the HTTP requests."""
    result = train_digits.main(num_workers=2, epochs=epochs, verbose=0)
    best = result.get_best_checkpoint("test_accuracy")
    state = best.to_dict()["model"]
    print(f"trained: test accuracy {result.metrics['test_accuracy']:.4f}")

    serve.run(DigitsClassifier.bind(state), name="digits", route_prefix="/digits", port=port)
    url = f"http://127.0.0.1:{serve.status()['proxy']['port']}/digits"
    _, test = train_digits.digits_split()
    images, labels = test.tensors[0][:requests].numpy(), test.tensors[1][:requests].numpy()

    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))

    def ask(i):
        t = time.perf_counter()
        r = client.post(url, json={"image": images[i, 0].tolist()})
        r.raise_for_status()
        return r.json(), (time.perf_counter() - t) * 1e3

    ask(0)   # the first forward pass of each replica loads torch's kernels
    with concurrent.futures.ThreadPoolExecutor(16) as pool:   # concurrent: batches form
        answers = list(pool.map(ask, range(len(images))))
    client.close()
    for i in range(5):
        (pred, ms), label = answers[i], labels[i]
        print(f"image {i}: predicted {pred['digit']} (confidence {pred['confidence']:.2f}), "
              f"label {label}, {ms:.1f} ms")
    accuracy = float(np.mean([a[0]["digit"] == y for a, y in zip(answers, labels)]))
    lat = sorted(a[1] for a in answers)
    print(f"served {len(answers)} predictions over HTTP: accuracy {accuracy:.3f}, "
          f"latency p50 {lat[len(lat) // 2]:.1f} ms, max {lat[-1]:.1f} ms")
    serve.shutdown()
    return accuracy


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--requests", type=int, default=64)
    a = p.parse_args()
    shoal.init(num_cpus=2)
    main(a.epochs, a.port, a.requests)
    shoal.shutdown()
