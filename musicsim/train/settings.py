"""A run's settings: `RunConfig`, frozen, and the configs whose keys its params hold.

Every field with ``hyperparameter`` metadata is a flag of ``experiments.run`` (its default and help
written here once, ``musicsim.cli.define_config_flags``). A run's ``params`` (the estimator's, one
flat dict) hold only the keys of the configs it reads (`configs_for`): the head's, the chosen
model's and its pretraining objective's; ``run.json`` records them and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from musicsim import head, pretraining
from musicsim import models as registry
from musicsim.params import ParamsConfig, hyperparameter, settle_params

# "Whole-track" evaluation lists (--eval_seconds=0) are still cropped to their centred MAX_EVAL_SECONDS: a list
# holds its tracks' activations at once, and an hour-long recording would take gigabytes (the run's own
# embedding of each track goes window by window instead, see musicsim.train.estimator.predict_embeddings).
MAX_EVAL_SECONDS = 120.0


def configs_for(model: str, *, pretrain: str | None = None) -> tuple[type[ParamsConfig], ...]:
    """The configs of a run's params: the head's, the model's own (and those it uses), the objective's.

    A baseline reads none.
    """
    entry = registry.entry(model)
    if entry.kind == "baseline":
        return ()
    found = [head.HeadConfig, *entry.configs]
    if pretrain:
        found.extend(pretraining.objective_of(pretrain).configs)
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; built from flags by ``experiments.run`` or directly by tests.

    ``params`` (the estimator's, one flat dict) is settled on construction: every default of the
    run's configs (`configs_for`) is filled in and a key none of them knows is refused
    (``musicsim.params.settle_params``). Frozen: a value the run settles is a new config
    (`with_params`).
    """

    model: str
    dataset_dir: str
    model_dir: str
    relevance: str | None = hyperparameter(None, "Label relevance definition (musicsim.relevance): album, genre, "
                                           "label, tags, tags_graded (default: the dataset's).")
    min_shared_tags: int | None = hyperparameter(None, "Tags in common for two tracks to be similar (tag "
                                                 "datasets).", type=int, bounds="at_least_one")
    params: dict = field(default_factory=dict)  # head + model hyperparameters, estimator ``params``
    list_kind: str | None = hyperparameter(None, "Training lists (default: pairwise for the pairwise loss, "
                                           "listwise otherwise).", choices=("listwise", "pairwise"))
    n_similar: int = hyperparameter(3, "Similar candidates per list.", bounds="at_least_one")
    n_dissimilar: int = hyperparameter(3, "Non-similar candidates per list.", bounds="at_least_one")
    batch_size: int = hyperparameter(4, "Lists per training batch.", bounds="at_least_one")
    crop_seconds: float = hyperparameter(4.0, "Random crop of each track while training.", bounds="positive")
    eval_seconds: float | None = hyperparameter(10.0, "Centred crop for the estimator's eval lists (0: whole "
                                                "tracks).", bounds="non_negative", off=0.0)
    predict_seconds: float | None = hyperparameter(None, "Centred crop when exporting embeddings (0: whole "
                                                   "tracks).", type=float, bounds="non_negative", off=0.0)
    # musicsim.embedder's window for long audio (None: its default)
    window_seconds: float | None = hyperparameter(None, "Export and search embed long audio in windows this long "
                                                  "(default: the longer of --crop_seconds and --eval_seconds; 0: "
                                                  "whole files).", type=float, bounds="non_negative")
    max_steps: int = hyperparameter(400, "Training steps (global).", bounds="at_least_one")
    max_minutes: float | None = hyperparameter(10.0, "Stop training after this many minutes (0: no limit).",
                                               bounds="non_negative", off=0.0)
    save_checkpoints_steps: int = hyperparameter(50, "Checkpoint (and evaluate) every N steps.",
                                                 bounds="at_least_one")
    early_stopping_patience: int = hyperparameter(200, "Stop when the eval --early_stopping_metric has not improved "
                                                  "for N steps (0: off).", bounds="non_negative")
    seed: int = hyperparameter(0, "Random seed (lists, crops, initialisation).", bounds="seed")
    eval_repeats: int = hyperparameter(5, "Seeds of the test protocol (mean and std are reported).",
                                       bounds="at_least_one")
    workers: int | None = hyperparameter(None, "Processes for feature extraction / data prep (default: all "
                                         "cores).", type=int, bounds="at_least_one")
    pretrain: str | None = hyperparameter(
        None, "Self-supervised pretraining of the WaveNet instead of similarity training: contrastive (two crops of "
        "a track are similar, other tracks not), predictive (next-step prediction) or distill (reproduce the "
        "pretrained --musicnn_model's --musicnn_layer vector of each crop; crops are rounded to whole 3 s "
        "patches). Labels are not used.", choices=pretraining.PRETRAINING_KINDS)
    pretrain_splits: tuple[str, ...] = hyperparameter(
        ("train",), "Splits whose audio the self-supervised pretraining reads (labels are never used): train, or "
        "e.g. train,eval,test to learn from every track of the catalog.", item=str)
    export_checkpoint: str = hyperparameter("best", "Embed (export, test, search) with the checkpoint that scored "
                                            "best on the early-stopping metric, or the last one.",
                                            choices=("best", "last"))
    early_stopping_metric: str = hyperparameter("NDCG@6", "Eval metric that early stopping and the best checkpoint "
                                                "follow (similarity training; loss must fall, the others rise).",
                                                choices=(*head.METRIC_KEYS, "loss"))
    n_negatives: int = hyperparameter(3, "contrastive: other tracks of the batch per list (batch_size must exceed "
                                      "it).", bounds="at_least_one")
    augmentation: dict = field(default_factory=dict)  # musicsim.pretraining.Augmentation settings
    warm_start_from: str | None = hyperparameter(None, "Fine-tune from this run's exported checkpoint (a "
                                                 "model_dir).")
    warm_start_vars: str = hyperparameter("stacks", "What to warm-start: the WaveNet stacks or every variable the "
                                          "checkpoint holds.", choices=("stacks", "all"))
    distribute: str | None = hyperparameter(None, "Train under a tf.distribute strategy (multi_worker reads "
                                            "TF_CONFIG).", choices=("mirrored", "multi_worker"))
    num_cpu_replicas: int | None = hyperparameter(None, "mirrored without GPUs: split the CPU into this many "
                                                  "replicas.", type=int, bounds="at_least_one")
    rerank: str = hyperparameter("none", "Also score the test split re-ranked with the catalog itself (no labels): "
                                 "'auto' picks the re-ranking with the best catalog mAP on the eval split, or a "
                                 "setting such as 'dba+aqe:k=3,alpha=3' or 'kreciprocal:k=10,k2=3' "
                                 "(musicsim.rerank).")

    def __post_init__(self):
        settled = settle_params(self.params, configs=configs_for(self.model, pretrain=self.pretrain))
        object.__setattr__(self, "params", settled)
        object.__setattr__(self, "pretrain_splits", tuple(self.pretrain_splits))

    def with_params(self, **values) -> "RunConfig":
        """This run with some params settled (the input's frame rate, a fitted model's similarity)."""
        return replace(self, params={**self.params, **values})

    @property
    def eval_crop_seconds(self) -> float:
        """Seconds of each track the estimator's evaluation lists read: ``eval_seconds``, or
        `MAX_EVAL_SECONDS` for whole tracks (``eval_seconds`` None)."""
        return float(self.eval_seconds or MAX_EVAL_SECONDS)
