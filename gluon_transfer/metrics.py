"""Classification metrics: top-1, top-5, mean per-class accuracy and the confusion matrix.

Mean per-class accuracy (the standard for FGVC Aircraft, Caltech-256 and other
imbalanced transfer sets) is ``mean_c correct_c / count_c`` over the classes that occur
in the evaluated labels.
"""
import numpy as np


class ClassificationMeter:
    def __init__(self, num_classes, topk=5):
        self.num_classes = int(num_classes)
        self.topk = min(int(topk), self.num_classes)
        self.reset()

    def reset(self):
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.n = 0
        self.topk_correct = 0

    def update(self, labels, scores):
        """``labels`` (N,) ints, ``scores`` (N, K) floats (logits or probabilities)."""
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape[0] != labels.shape[0]:
            raise ValueError('%d labels but %d score rows' % (labels.shape[0], scores.shape[0]))
        if labels.size == 0:
            return
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError('label %d outside [0, %d)' % (labels.max(), self.num_classes))
        pred = scores.argmax(axis=1)
        np.add.at(self.confusion, (labels, pred), 1)
        # A label is in the top k when fewer than k classes score strictly higher
        # (ties resolved in the sample's favour, as argsort-based top-k may not be).
        own = scores[np.arange(len(labels)), labels]
        higher = (scores > own[:, None]).sum(axis=1)
        self.topk_correct += int((higher < self.topk).sum())
        self.n += len(labels)

    def result(self):
        if self.n == 0:
            return {'top1': float('nan'), 'top5': float('nan'), 'mean_class_acc': float('nan'), 'n': 0}
        counts = self.confusion.sum(axis=1)
        present = counts > 0
        per_class = np.diag(self.confusion)[present] / counts[present]
        return {'top1': float(np.trace(self.confusion)) / self.n,
                'top%d' % 5: float(self.topk_correct) / self.n,
                'mean_class_acc': float(per_class.mean()),
                'n': int(self.n)}
