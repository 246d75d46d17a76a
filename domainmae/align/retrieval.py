"""Recall@k both ways, its chance level, and a bag-of-words baseline that retrieves without a text tower.

Captions repeat (a metadata template gives one text per condition), so retrieval runs over the test rows'
distinct captions: image->text asks whether an image's own caption is among the k captions it ranks highest;
text->image asks, for each distinct caption, whether any of the k images it ranks highest carries it.
Image->text is also given balanced (``i2t_macro@k``: the mean over captions of each caption's image->text
recall), since with skewed classes the plain mean is dominated by the majority caption: always ranking it
first scores its share of the rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

KS = (1, 5, 10)
WAYS = ("i2t", "i2t_macro", "t2i")  # the order of the columns in a table


def recall_at_k(similarity: np.ndarray, captions: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{"i2t@k", "i2t_macro@k", "t2i@k"}`` from ``similarity`` ``[N images, T captions]`` and each image's
    caption id ``captions`` ``[N]`` (0..T-1, each present)."""
    text_rank = np.argsort(-similarity, axis=1, kind="stable")  # [N, T]
    image_rank = np.argsort(-similarity.T, axis=1, kind="stable")  # [T, N]
    counts = np.bincount(captions, minlength=similarity.shape[1])  # [T]
    found = {}
    for k in ks:
        hit = (text_rank[:, :k] == captions[:, None]).any(axis=1)  # [N]
        found[f"i2t@{k}"] = float(hit.mean())
        found[f"i2t_macro@{k}"] = float(np.mean(np.bincount(captions, weights=hit, minlength=len(counts)) / counts))
        top = captions[image_rank[:, :k]]  # [T, k] the captions of each caption's k best images
        found[f"t2i@{k}"] = float((top == np.arange(similarity.shape[1])[:, None]).any(axis=1).mean())
    return found


def chance_recall(captions: np.ndarray, n_captions: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected recall@k of a random ranking, for the same ``captions`` ``[N]`` over ``n_captions``."""
    n = len(captions)
    counts = np.bincount(captions, minlength=n_captions)
    found = {}
    for k in ks:
        found[f"i2t@{k}"] = found[f"i2t_macro@{k}"] = min(k, n_captions) / n_captions  # the same for every caption
        # A caption misses when all k images drawn (without replacement) are among the n - count others; with
        # fewer than k images every one is drawn.
        drawn = min(k, n)
        found[f"t2i@{k}"] = float(np.mean([1 - comb(n - c, drawn) / comb(n, drawn) for c in counts]))
    return found


def bag_of_words_similarity(train_x: np.ndarray, train_texts: Sequence[str], test_x: np.ndarray,
                            captions: Sequence[str]) -> np.ndarray:  # fmt: skip
    """Similarity ``[N test, T]`` of a baseline with no text tower: ridge regression from the (standardised)
    image embeddings ``[N train, D]`` to the TF-IDF vector of their captions, then cosine to each caption's."""
    words = TfidfVectorizer().fit(train_texts)
    target = words.transform(train_texts).toarray()
    predicted = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(train_x, target).predict(test_x)
    vectors = words.transform(list(captions)).toarray()
    return unit(predicted) @ unit(vectors).T


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1, norm)


def format_scores(scores: dict) -> str:
    """Held-out recall@k (``held_out_scores``' dict) as a text table: model, bag of words, chance."""
    ks = sorted({int(key.split("@")[1]) for key in scores["model"]})
    columns = [(f"{way} recall@{k}", f"{way}@{k}") for way in WAYS for k in ks]  # (header, key)
    head = f"held-out rows {scores['n_test']} (train {scores['n_train']}), distinct captions {scores['n_captions']}"
    lines = [head, f"{'':<14}" + "".join(f"{label:>{len(label) + 2}}" for label, _ in columns)]
    for name in ("model", "bag_of_words", "chance"):
        row = scores[name]
        lines.append(f"{name:<14}" + "".join(f"{row[key]:>{len(label) + 2}.3f}" for label, key in columns))
    return "\n".join(lines)
