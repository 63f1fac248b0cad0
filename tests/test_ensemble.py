import numpy as np
import pytest

from asd.scoring.ensemble import fuse, zscore_params
from asd.errors import AsdError

# Hand-computed example: train LOO (mean, std ddof=0) per epoch -> z-scores of the test scores.
#   epoch 1: train [1, 3]   -> (2, 1);  test [2, 5]   -> [0, 3]
#   epoch 2: train [0, 4]   -> (2, 2);  test [4, 0]   -> [1, -1]
#   epoch 3: train [10, 12] -> (11, 1); test [11, 14] -> [0, 3]
TEST = {1: np.array([2.0, 5.0]), 2: np.array([4.0, 0.0]), 3: np.array([11.0, 14.0])}
TRAIN = {1: np.array([1.0, 3.0]), 2: np.array([0.0, 4.0]), 3: np.array([10.0, 12.0])}


def test_zscore_params_are_population_mean_and_std():
    assert zscore_params(np.array([0.0, 4.0]), name="fan") == (2.0, 2.0)
    assert zscore_params(np.array([1.0, 2.0, 3.0]), name="fan") == pytest.approx((2.0, np.sqrt(2 / 3)))


def test_fuse_three_epochs_by_hand():
    fused_test, fused_train = fuse(TEST, TRAIN, [1, 2, 3], name="fan")
    np.testing.assert_allclose(fused_test, [1 / 3, 5 / 3])
    np.testing.assert_allclose(fused_train, [-1.0, 1.0])


def test_fuse_single_epoch_is_its_zscore():
    fused_test, fused_train = fuse(TEST, TRAIN, [2], name="fan")
    np.testing.assert_allclose(fused_test, [1.0, -1.0])
    np.testing.assert_allclose(fused_train, [-1.0, 1.0])


def test_fused_score_of_a_clip_does_not_depend_on_other_test_clips():
    more_test = {epoch: np.concatenate([scores, [100.0, -50.0, 7.0]]) for epoch, scores in TEST.items()}
    fused_more, _ = fuse(more_test, TRAIN, [1, 2, 3], name="fan")
    np.testing.assert_allclose(fused_more[:2], [1 / 3, 5 / 3])


def test_missing_epoch_is_named():
    with pytest.raises(AsdError, match="ensemble epoch 4 has no scores"):
        fuse(TEST, TRAIN, [1, 4], name="fan")
    with pytest.raises(AsdError, match="no epochs"):
        fuse(TEST, TRAIN, [], name="fan")


def test_mismatched_clip_counts_and_constant_train_scores_are_refused():
    with pytest.raises(AsdError, match="different numbers of clips"):
        fuse({1: TEST[1], 2: np.zeros(3)}, TRAIN, [1, 2], name="fan")
    with pytest.raises(AsdError, match="fan epoch 1: every training leave-one-out score equals 0.5"):
        fuse(TEST, {1: np.full(4, 0.5)}, [1], name="fan")
