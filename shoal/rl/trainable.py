"""An algorithm as a shoal.tune trainable: each trial builds the algorithm and trains it.

    from shoal import tune
    trainable = PPOConfig().environment("CartPole-v1").to_trainable()
    tuner = tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-2)},
                       tune_config=tune.TuneConfig(metric="episode_return_mean", mode="max",
                                                   num_samples=4))

A trial's config overrides fields of the base config (any field: ``lr``,
``train_batch_size``, ``num_env_runners``...); ``step`` is one ``train()``,
checkpoints are ``save``/``restore`` (so schedulers that pause, resume or
copy trials, like PBT, work), and the runner and learner actors stop with
the trial.
"""
from __future__ import annotations

from shoal.tune import Trainable


class AlgorithmTrainable(Trainable):
    """A shoal.tune Trainable running ``base_config``'s algorithm with the trial's overrides.

    Made by ``AlgorithmConfig.to_trainable()``, which passes ``base_config``
    with ``tune.with_parameters`` (put in the object store once).
    """

    def setup(self, config: dict, base_config=None) -> None:
        """Build the algorithm from ``base_config`` with ``config``'s fields replaced.

        Raises:
            ValueError: a key of ``config`` is not a field of the config.
        """
        if base_config is None:
            raise ValueError("AlgorithmTrainable needs base_config: build it with "
                             "config.to_trainable() rather than using the class directly")
        c = base_config.copy()
        for k, v in config.items():
            if not hasattr(c, k) or k == "algo_class":
                raise ValueError(f"trial config key {k!r} is not a field of {type(c).__name__}; "
                                 f"param_space keys must be its fields (lr, gamma, train_batch_size, ...)")
            setattr(c, k, v)
        c.verbose = 0
        self.algorithm = c.build()

    def step(self) -> dict:
        """One training iteration; its metrics."""
        return self.algorithm.train()

    def save_checkpoint(self, checkpoint_dir: str):
        """The algorithm's checkpoint, written into ``checkpoint_dir``."""
        self.algorithm.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint) -> None:
        """Restore the algorithm from a directory ``save_checkpoint`` wrote."""
        self.algorithm.restore(checkpoint)

    def cleanup(self) -> None:
        """Stop the algorithm's runner and learner actors."""
        self.algorithm.stop()
