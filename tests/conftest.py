"""Test-wide setup: keep every test run's DDS traffic private and on this machine."""
import os
import random

import pytest

# Set before anything imports rclpy: the middleware reads these at rclpy.init(). A random
# domain keeps concurrent test runs on one machine from discovering each other's nodes, and
# LOCALHOST keeps discovery traffic on loopback.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(1, 101)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

# The CI and dev machines have 2 shared cores: torch's intra-op threads on tiny test models cost
# more in contention than they save (tiny-model ONNX export ran ~5x slower with 2 threads).
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the library-only parts test without torch too
    pass


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random LION (lion-tiny + tokenizers trained on a few hundred sentences) saved in the
    real model-directory format; built once per session. Tests must not modify it."""
    from tiny_lion import save_model_dir, tiny_model, tiny_tokenizers

    tokenizers = tiny_tokenizers()
    return save_model_dir(tmp_path_factory.mktemp("tiny-lion") / "model", tiny_model(tokenizers), tokenizers)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """nano-style tokenizers (small vocabularies) trained on 40 synthetic scenes, for training tests."""
    from lion_ros.data.synthetic import SyntheticConfig
    from lion_ros.train.config import TokenizerTraining
    from lion_ros.train.tokenizer_training import build_nano_tokenizers

    directory = tmp_path_factory.mktemp("tokenizers")
    build_nano_tokenizers(TokenizerTraining(t5_vocab_size=300, qformer_vocab_size=300, corpus_scenes=40),
                          SyntheticConfig()).save(directory)
    return directory


@pytest.fixture()
def make_harness():
    """make_harness(runtime=None, **node_parameters) -> a running ros_harness.Harness (lion_node
    over real DDS), closed afterwards. For the ROS tests only: it imports rclpy."""
    from ros_harness import Harness

    made = []

    def make(runtime=None, **params):
        made.append(Harness(runtime, **params))
        return made[-1]

    yield make
    for h in made:
        h.close()
