"""A shoal program for a Ray cluster: a data pipeline, an ML fit and a 2-worker training run.

On Kubernetes, deploy/kubernetes/rayjob.yaml runs it (mounted from the
``shoal-job`` ConfigMap). Anywhere else: ``python shoal_job.py`` runs it on
one machine, or inside a Ray job (RAY_ADDRESS set) on that Ray cluster.
"""
import os

import numpy as np
import torch

import shoal
import shoal.data as sd
import shoal.train as st
from shoal.ml import LogisticRegression, RandomForestClassifier


def train_loop(config):
    torch.manual_seed(0)
    model = st.prepare_model(torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    X, y = config["data"]
    rank, world = st.get_context().rank, st.get_context().world_size
    Xs, ys = torch.from_numpy(X[rank::world]), torch.from_numpy(y[rank::world])
    for epoch in range(config["epochs"]):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xs), ys)
        loss.backward()
        opt.step()
        st.report({"epoch": epoch, "loss": loss.item()})


def main():
    shoal.init(address="auto" if os.environ.get("RAY_ADDRESS") else None)
    nodes = [n for n in shoal.nodes() if n["Alive"]]
    print(f"cluster: {len(nodes)} node(s), {shoal.cluster_resources().get('CPU', 0):g} CPUs")

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    ds = sd.from_numpy({"x": X, "y": y}).map_batches(
        lambda b: {**{f"f{i}": b["x"][:, i] for i in range(4)}, "y": b["y"]})
    feats = [f"f{i}" for i in range(4)]
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    forest.fit(ds, features=feats, label="y")
    logreg = LogisticRegression().fit(ds, "y")
    print(f"random forest accuracy {np.mean(forest.predict(X) == y):.3f}, "
          f"logistic regression accuracy {np.mean(logreg.predict(X) == y):.3f}")

    result = st.Trainer(train_loop, num_workers=2, placement_strategy="SPREAD",
                        config={"epochs": 20, "data": (X, y)},
                        run_config=st.RunConfig(storage_path=os.environ.get(
                            "SHOAL_STORAGE", "/tmp/shoal_results"), verbose=0)).fit()
    print(f"trained 2 workers: final loss {result.metrics['loss']:.4f}")
    shoal.shutdown()


if __name__ == "__main__":
    main()
