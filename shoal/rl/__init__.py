"""shoal.rl: distributed reinforcement learning on shoal's actors and object store.

Algorithms: PPO (discrete and continuous actions), DQN (double, dueling,
n-step, prioritized replay) and IMPALA (asynchronous sampling, V-trace).

    from shoal.rl import PPOConfig

    algo = (PPOConfig()
            .environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
            .training(lr=3e-4, gamma=0.99)
            .build())
    for _ in range(10):
        print(algo.train()["episode_return_mean"])
    algo.save("ckpt")
    action = algo.compute_single_action(obs)

An algorithm is a shoal.tune trainable through ``config.to_trainable()``.

Env runners are actors stepping Gymnasium vector environments; their
sample batches come back through the object store as NumPy arrays; weights
go out with one ``shoal.put`` per iteration; learners run in the driver or
as a data-parallel group (shoal.train's DDP over shoal.collective).
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.rl", "rl", "gymnasium", "torch")

from shoal.rl.advantages import compute_gae, vtrace
from shoal.rl.algorithm import Algorithm
from shoal.rl.config import AlgorithmConfig
from shoal.rl.dqn import DQN, DQNConfig, n_step_transitions
from shoal.rl.env import make_env
from shoal.rl.env_runner import EnvRunner, RunnerSpec
from shoal.rl.impala import IMPALA, IMPALAConfig, impala_loss
from shoal.rl.learner import Learner, LearnerGroup, LearnerSpec
from shoal.rl.models import ActorCritic, ModelConfig, QNetwork
from shoal.rl.ppo import PPO, PPOConfig, ppo_loss
from shoal.rl.replay import PrioritizedReplayBuffer, ReplayBuffer
from shoal.rl.runner_group import EnvRunnerGroup
from shoal.rl.trainable import AlgorithmTrainable

__all__ = [
    "DQN", "DQNConfig", "IMPALA", "IMPALAConfig", "PPO", "ActorCritic", "PrioritizedReplayBuffer", "ReplayBuffer",
    "n_step_transitions", "Algorithm", "AlgorithmConfig", "AlgorithmTrainable", "EnvRunner", "EnvRunnerGroup", "Learner",
    "LearnerGroup", "LearnerSpec", "ModelConfig", "PPOConfig", "QNetwork", "RunnerSpec",
    "compute_gae", "impala_loss", "make_env", "ppo_loss", "vtrace",
]
