"""Regenerate the files in examples/ (run once; the outputs are committed).

    python examples/make_examples.py --cifar10 ../shared/data/cifar10.tar.gz

* cifar10_<class>.png: the first test image of four classes, from the CIFAR-10 archive.
* china.jpg, flower.jpg: larger photos shipped with scikit-learn (CC BY 2.0, see README.md).
* classifier_scores.csv: held-out outputs of a real classifier: scikit-learn's logistic regression on the
  Wisconsin breast-cancer data set (shipped with scikit-learn), trained on half, scored on the other half.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CIFAR_PICKS = {"airplane": "test/airplane/0000.jpg", "cat": "test/cat/0000.jpg", "horse": "test/horse/0000.jpg",
               "ship": "test/ship/0000.jpg"}


def cifar_examples(archive: Path) -> None:
    from PIL import Image

    with tarfile.open(archive) as tf:
        members = {m.name.split("cifar10/", 1)[-1]: m for m in tf.getmembers() if m.isfile()}
        for name, inner in CIFAR_PICKS.items():
            with tf.extractfile(members[inner]) as f:
                Image.open(f).convert("RGB").save(HERE / f"cifar10_{name}.png")


def photos() -> None:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(folder / name, HERE / name)


def classifier_scores() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    y = 1 - y  # positive = malignant (the class a screening threshold is about)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=0)
    # A weak regulariser and few features keep the scores overlapping, as a real screening model's are.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01)).fit(x_train[:, :4], y_train)
    scores = model.predict_proba(x_test[:, :4])[:, 1]
    with open(HERE / "classifier_scores.csv", "w") as f:
        f.write("label,score\n")
        f.writelines(f"{int(label)},{score:.6f}\n" for label, score in zip(y_test, scores))
    print(f"classifier_scores.csv: {len(y_test)} rows, {int(y_test.sum())} positive, "
          f"mean score {np.mean(scores):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar10", type=Path, default=HERE.parents[1] / "shared" / "data" / "cifar10.tar.gz")
    args = parser.parse_args()
    cifar_examples(args.cifar10)
    photos()
    classifier_scores()
