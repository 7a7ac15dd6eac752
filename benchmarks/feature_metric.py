"""Can similarity be *learned* on top of the librosa features, and does it carry to unseen albums?

    python benchmarks/feature_metric.py --data_dir=/tmp/gen/data --seeds=0,1,2 [--score_scale=10]
        [--train_lists=6,26] [--protocols=track,label]

A diagnostic for the generalisation issue. It takes the two prepared datasets of
``benchmarks/generalisation.py`` (``<data_dir>/track_sr16000_pool2``: the paper's split, every album in
every split; ``<data_dir>/label_sr16000_pool2``: album-disjoint) and the librosa feature vector of
every track (``musicsim.features``, from the datasets' shared feature cache), and compares, on each
test split, by catalog mAP, PC and NDCG@1 (``musicsim.evaluation``):

- ``librosa``: the paper's baseline (standardise, PCA to 99 % of the variance, Euclidean);
- ``standardised, cosine``: the standardised features compared by angle (no PCA, nothing learned);
- ``learned linear`` and ``learned mlp``: a projection of the standardised features (linear to 64-d,
  or a 256-unit ReLU layer with dropout then 64-d) trained with the project's own pipeline: training
  lists from ``inputs.make_list_input_fn`` (the feature vector is a one-step sequence), the shared
  ranking head (LambdaLoss, cosine, scores times ``--score_scale``), early stopping on eval NDCG@6 and
  the best checkpoint (``musicsim.train.estimator``); training lists of ``--train_lists`` similar and
  non-similar candidates (the paper's 3 + 3 by default); mean ± std over ``--seeds``.

The learned projection starts from the very features the baseline uses, so if it beats them on the
track split but not on the album-disjoint split, what limits learned similarity there is the number
of training albums, not the input or the training time. Nothing is written except each run's estimator
directory under ``--runs_dir``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402  (after the log level is set)
from musicsim import evaluation, head  # noqa: E402
from musicsim.data.dataset import DatasetInfo, read_catalog  # noqa: E402
from musicsim.inputs import TrackSet, make_list_input_fn  # noqa: E402
from musicsim.models.librosa_pca import LibrosaPCAModel  # noqa: E402
from musicsim.relevance import make_relevance  # noqa: E402
from musicsim.train import estimator as training  # noqa: E402

PROTOCOLS = {"track": "track split (paper)", "label": "album-disjoint split"}
SPLITS = ("train", "eval", "test")
METRICS = ("catalog_mAP", "PC", "NDCG@1")
LEARNED = {"learned linear": dict(hidden=[], dropout=0.0), "learned mlp": dict(hidden=[256], dropout=0.5)}


def load_features(dataset_dir: str, *, baseline: LibrosaPCAModel) -> dict[str, TrackSet]:
    """Each split's librosa feature vectors, extracted as the baseline extracts them, as a TrackSet of
    one-step sequences ``[1, feature_dim]``."""
    track_sets = {}
    for split in SPLITS:
        catalog = read_catalog(dataset_dir, split=split)
        vectors, ok, skipped = baseline.extract(paths=[e.path for e in catalog])
        for path, reason in skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        track_sets[split] = TrackSet(track_ids=[catalog[i].track_id for i in ok],
                                     labels=[catalog[i].labels for i in ok],
                                     sequences=[v[None, :].astype(np.float32) for v in vectors], frame_rate=1.0)
    return track_sets


def standardised(track_sets: dict[str, TrackSet], *, baseline: LibrosaPCAModel) -> dict[str, TrackSet]:
    """Every split standardised as the fitted baseline standardises (the train split's mean and std)."""
    mean, scale = baseline.scaler_mean.astype(np.float32), baseline.scaler_scale.astype(np.float32)
    return {split: TrackSet(track_ids=t.track_ids, labels=t.labels, sequences=[(s - mean) / scale for s in t.sequences],
                            frame_rate=t.frame_rate) for split, t in track_sets.items()}


def embed_projection(audio, length, *, params, training):
    """The learned models: dense layers over the one-step feature sequence ``[batch, 1, dim]`` -> ``[batch, 64]``."""
    del length  # one step per track
    hidden = tf.keras.layers.Dropout(params["input_dropout"], name="input_dropout")(audio[:, 0, :], training=training)
    for i, units in enumerate(params["hidden"]):
        hidden = tf.keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(hidden)
        hidden = tf.keras.layers.Dropout(params["dropout"], name=f"dropout{i}")(hidden, training=training)
    return tf.keras.layers.Dense(params["embedding_size"], name="projection")(hidden)


def train_projection(track_sets: dict[str, TrackSet], *, relevance_def, hidden: list[int], dropout: float, seed: int,
                     model_dir: str, max_steps: int, n_similar: int = 3, n_dissimilar: int = 3,
                     score_scale: float = 1.0) -> np.ndarray:
    """Train one learned projection with the project's pipeline; its test-split embeddings ``[n, 64]``."""
    params = dict(loss="lambda", similarity="cosine", score_scale=score_scale, learning_rate=1e-3, clip_norm=5.0,
                  hidden=hidden, dropout=dropout, input_dropout=0.2, embedding_size=64)
    patience, every = 400, 50
    estimator = training.make_estimator(model="feature_projection", model_fn=head.make_model_fn(embed_projection),
                                        model_dir=model_dir, params=params, seed=seed, save_checkpoints_steps=every,
                                        keep_checkpoint_max=training.checkpoints_to_keep(
                                            early_stopping_patience=patience, save_checkpoints_steps=every))
    lists = dict(relevance_def=relevance_def, batch_size=8, crop_seconds=None)
    # Training lists may be longer than the paper's 3 + 3; the eval lists (early stopping) stay 3 + 3.
    training.train_and_evaluate(
        estimator=estimator, max_steps=max_steps, early_stopping_patience=patience, eval_every_steps=every,
        train_input_fn=make_list_input_fn(tracks=track_sets["train"], mode="train", seed=seed, n_similar=n_similar,
                                          n_dissimilar=n_dissimilar, **lists),
        eval_input_fn=make_list_input_fn(tracks=track_sets["eval"], mode="eval", seed=0, eval_seconds=None, **lists))
    return training.predict_embeddings(estimator=estimator, tracks=track_sets["test"],
                                       checkpoint_path=training.best_checkpoint(model_dir))


def scores(embeddings: np.ndarray, test: TrackSet, *, relevance_def, kind: str) -> dict[str, float]:
    relevance, _ = test.relevance(relevance_def)
    result = evaluation.evaluate(relevance_matrix=relevance, embeddings=embeddings, similarity=kind)
    return {m: result[m][0] for m in METRICS}


def run_protocol(dataset_dir: str, *, seeds: list[int], runs_dir: str, workers: int, max_steps: int,
                 list_sizes: tuple[int, int] = (3, 3), score_scale: float = 1.0) -> dict[str, list[dict[str, float]]]:
    """{model: one metrics dict per seed (one for the models without training)} on one protocol."""
    info = DatasetInfo.load(dataset_dir)
    relevance_def = make_relevance(info.relevance)
    # The baseline exactly as experiments.run fits it (same excerpt, same feature cache).
    baseline = LibrosaPCAModel(max_seconds=info.max_seconds, workers=workers, progress=False,
                               cache_dir=os.path.join(dataset_dir, "feature_cache"))
    raw = load_features(dataset_dir, baseline=baseline)
    test = raw["test"]
    baseline.fit_features(features=np.concatenate(raw["train"].sequences))
    rows = {"librosa": [scores(baseline.embed_features(features=np.concatenate(test.sequences)), test,
                               relevance_def=relevance_def, kind="euclidean")]}
    standard = standardised(raw, baseline=baseline)
    rows["standardised, cosine"] = [scores(np.concatenate(standard["test"].sequences), test, relevance_def=relevance_def,
                                           kind="cosine")]
    for name, settings in LEARNED.items():
        rows[name] = []
        for seed in seeds:
            model_dir = os.path.join(runs_dir, os.path.basename(dataset_dir), name.replace(" ", "_"), f"seed{seed}")
            embeddings = train_projection(standard, relevance_def=relevance_def, seed=seed, model_dir=model_dir,
                                          max_steps=max_steps, n_similar=list_sizes[0], n_dissimilar=list_sizes[1],
                                          score_scale=score_scale, **settings)
            rows[name].append(scores(embeddings, test, relevance_def=relevance_def, kind="cosine"))
            print(f"  {os.path.basename(dataset_dir)} {name} seed {seed}: "
                  + ", ".join(f"{m} {v:.3f}" for m, v in rows[name][-1].items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="data/generalisation",
                        help="the prepared datasets of benchmarks/generalisation.py (run it first)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of the learned projections")
    parser.add_argument("--runs_dir", default=None, help="estimator directories (default: a temporary folder)")
    parser.add_argument("--max_steps", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2, help="feature extraction processes (cache misses)")
    parser.add_argument("--train_lists", default="3,3", help="similar,non-similar candidates per training list "
                        "(the eval and test lists keep the paper's 3 + 3)")
    parser.add_argument("--score_scale", type=float, default=1.0, help="the head's score scale (inverse temperature)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="which splits to run")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        parser.error("--seeds: give at least one seed")
    list_sizes = tuple(int(n) for n in args.train_lists.split(","))
    if len(list_sizes) != 2 or min(list_sizes) < 1:
        parser.error(f"--train_lists: two counts >= 1, e.g. 3,3; got {args.train_lists!r}")
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        parser.error(f"--protocols: some of {list(PROTOCOLS)}, got {args.protocols!r}")
    datasets = {p: os.path.join(args.data_dir, f"{p}_sr16000_pool2") for p in protocols}
    missing = [d for d in datasets.values() if not os.path.isfile(os.path.join(d, "dataset.json"))]
    if missing:
        parser.error(f"no prepared dataset at {missing}: run benchmarks/generalisation.py with this --data_dir first")
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="feature_metric_")

    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
    results = {p: run_protocol(d, seeds=seeds, runs_dir=runs_dir, workers=args.workers, max_steps=args.max_steps,
                               list_sizes=list_sizes, score_scale=args.score_scale) for p, d in datasets.items()}

    print(f"\ntraining lists: {list_sizes[0]} similar + {list_sizes[1]} non-similar candidates; "
          f"score scale {args.score_scale}")
    header = " | ".join(f"{PROTOCOLS[p]}: {m}" for p in protocols for m in METRICS)
    print(f"| model | {header} |\n|---|" + "---:|" * (len(protocols) * len(METRICS)))
    for model in results[protocols[0]]:
        cells = []
        for protocol in protocols:
            for metric in METRICS:
                values = np.array([r[metric] for r in results[protocol][model]])
                cells.append(f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if values.size > 1 else ""))
        print(f"| {model} | " + " | ".join(cells) + " |")
    print(f"\nlearned rows: mean ± std over seeds {seeds}; estimator runs in {runs_dir}")


if __name__ == "__main__":
    main()
