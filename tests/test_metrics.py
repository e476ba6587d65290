import numpy as np
import pytest

from gluon_transfer.metrics import ClassificationMeter


def test_top1_top5_mean_class_accuracy_by_hand():
    m = ClassificationMeter(num_classes=6, topk=5)
    scores = np.array([
        [9, 1, 0, 0, 0, 0],   # label 0 -> top1 hit
        [0, 1, 9, 2, 3, 4],   # label 1 -> rank 5 (9,4,3,2,1): top5 hit, top1 miss
        [5, 4, 3, 2, 1, 0],   # label 5 -> rank 6: miss both
        [0, 0, 0, 7, 0, 0],   # label 3 -> hit
    ], dtype=np.float32)
    labels = np.array([0, 1, 5, 3])
    m.update(labels, scores)
    m.update(np.array([0]), np.array([[0, 5, 0, 0, 0, 0]], dtype=np.float32))  # label 0 -> miss top1, top5 hit
    r = m.result()
    assert r['n'] == 5
    assert r['top1'] == pytest.approx(2 / 5)
    assert r['top5'] == pytest.approx(4 / 5)
    # per class: class0 1/2, class1 0/1, class3 1/1, class5 0/1 -> mean 0.375
    assert r['mean_class_acc'] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert m.confusion[0, 0] == 1 and m.confusion[0, 1] == 1 and m.confusion[5, 0] == 1


def test_meter_rejects_bad_labels():
    m = ClassificationMeter(3)
    with pytest.raises(ValueError):
        m.update(np.array([3]), np.zeros((1, 3)))
