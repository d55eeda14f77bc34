"""Worker and server rules of every algorithm against hand-computed numpy results."""

import numpy as np
import pytest

from distkeras.algorithms import (
    ADAG,
    AEASGD,
    EAMSGD,
    EASGD,
    Averaging,
    Downpour,
    DynSGD,
    registry,
)


class RecordingChannel:
    """An in-process channel: applies the algorithm's server rule to its own center."""

    def __init__(self, algorithm, center):
        self.algorithm = algorithm
        self.center = [np.array(c, dtype=np.float32) for c in center]
        self.commits = []
        self.pulls = 0

    def pull(self):
        self.pulls += 1
        return [c.copy() for c in self.center]

    def commit(self, arrays):
        self.commits.append([a.copy() for a in arrays])
        self.algorithm.server_rule(self.center, arrays, 0)

    def commit_and_pull(self, arrays):
        self.commit(arrays)
        return self.pull()


def w(*values):
    return [np.array(values, dtype=np.float32)]


def test_downpour_commits_difference_and_takes_center():
    algorithm = Downpour(5)
    channel = RecordingChannel(algorithm, w(10.0, 10.0))
    weights, reference = algorithm.worker_rule(w(3.0, 5.0), w(1.0, 1.0), channel)
    np.testing.assert_array_equal(channel.commits[0][0], [2.0, 4.0])
    np.testing.assert_array_equal(weights[0], [12.0, 14.0])
    np.testing.assert_array_equal(reference[0], [12.0, 14.0])


def test_adag_normalises_by_window_also_for_a_partial_window():
    algorithm = ADAG(4)
    channel = RecordingChannel(algorithm, w(0.0, 0.0))
    weights, _ = algorithm.worker_rule(w(3.0, 5.0), w(1.0, 1.0), channel)
    np.testing.assert_allclose(channel.commits[0][0], [0.5, 1.0])
    np.testing.assert_allclose(weights[0], [0.5, 1.0])


def test_dynsgd_scales_by_staleness():
    algorithm = DynSGD(5)
    center = w(1.0, 1.0)
    algorithm.server_rule(center, w(4.0, 8.0), staleness=3)
    np.testing.assert_allclose(center[0], [2.0, 3.0])
    algorithm.server_rule(center, w(1.0, 1.0), staleness=0)
    np.testing.assert_allclose(center[0], [3.0, 4.0])


@pytest.mark.parametrize("cls", [AEASGD, EAMSGD])
def test_elastic_rule_pulls_then_commits(cls):
    algorithm = cls(32, **registry.spec(cls.__name__.lower()).defaults())  # alpha = 0.5
    channel = RecordingChannel(algorithm, w(2.0, 0.0))
    weights, _ = algorithm.worker_rule(w(4.0, 4.0), w(9.0, 9.0), channel)
    np.testing.assert_allclose(channel.commits[0][0], [1.0, 2.0])  # E = 0.5 (W - C)
    np.testing.assert_allclose(weights[0], [3.0, 2.0])  # W - E
    np.testing.assert_allclose(channel.center[0], [3.0, 2.0])  # C + E
    assert channel.pulls == 1


def test_eamsgd_brings_nesterov_sgd_and_aeasgd_none():
    import keras

    identifier = EAMSGD(32, rho=5.0, learning_rate=0.05, momentum=0.8).worker_optimizer()
    optimizer = keras.optimizers.get(identifier)
    assert optimizer.get_config()["nesterov"] is True
    assert optimizer.get_config()["momentum"] == pytest.approx(0.8)
    assert AEASGD(32, rho=5.0, learning_rate=0.1).worker_optimizer() is None


def test_easgd_round_uses_the_shared_center():
    algorithm = EASGD(32, rho=5.0, learning_rate=0.1)
    center = w(0.0, 0.0)
    reference = w(0.0, 0.0)
    commits = []

    class RoundChannel:
        def commit_and_pull(self, arrays):
            commits.append(arrays)
            return w(-1.0, -1.0)  # what the server releases; checked below

    new_a, ref_a = algorithm.worker_rule(w(2.0, 4.0), reference, RoundChannel())
    new_b, _ = algorithm.worker_rule(w(-2.0, 0.0), reference, RoundChannel())
    np.testing.assert_allclose(commits[0][0], [1.0, 2.0])
    np.testing.assert_allclose(commits[1][0], [-1.0, 0.0])
    np.testing.assert_allclose(new_a[0], [1.0, 2.0])
    np.testing.assert_allclose(new_b[0], [-1.0, 0.0])
    np.testing.assert_allclose(ref_a[0], [-1.0, -1.0])
    algorithm.round_rule(center, commits)
    np.testing.assert_allclose(center[0], [0.0, 2.0])  # C + sum of E_i


def test_averaging_round_takes_the_mean():
    algorithm = Averaging(None)
    center = w(100.0, 100.0)
    algorithm.round_rule(center, [w(1.0, 2.0), w(3.0, 6.0), w(5.0, 7.0)])
    np.testing.assert_allclose(center[0], [3.0, 5.0])
    assert algorithm.synchronous and algorithm.window is None


def _easgd_rounds(algorithm, workers: int, rounds: int) -> float:
    """Distance of the center to the workers' mean after `rounds` EASGD rounds in which
    the workers make no local progress (their weights start at 0..workers-1)."""

    class RoundChannel:  # collects one round's commits; the center is released after it
        def __init__(self, center):
            self.center, self.commits = center, []

        def commit_and_pull(self, arrays):
            self.commits.append(arrays)
            return self.center

    weights = [w(float(i)) for i in range(workers)]
    center = w(10.0)
    for _ in range(rounds):
        channel = RoundChannel(center)
        weights = [algorithm.worker_rule(x, center, channel)[0] for x in weights]
        center = [c.copy() for c in center]
        algorithm.round_rule(center, channel.commits)
    return abs(float(center[0][0]) - float(np.mean([x[0][0] for x in weights])))


@pytest.mark.parametrize("workers", [4, 8])
def test_easgd_default_rounds_settle_with_many_workers(workers):
    """The default ρ keeps N·α at 0.9: the center settles on the workers' mean, where
    the former fixed α = 0.5 oscillates (4 workers) or diverges (8)."""
    from distkeras.trainers import EASGD as EASGDTrainer

    from .conftest import mlp

    algorithm = EASGDTrainer(mlp(hidden=(8,)), num_workers=workers).algorithm()
    assert workers * algorithm.alpha == pytest.approx(0.9)
    assert _easgd_rounds(algorithm, workers, rounds=30) < 1e-3
    former = EASGD(32, rho=5.0, learning_rate=0.1)
    assert _easgd_rounds(former, workers, rounds=30) > 1.0
