"""The album-folds protocol's rows, tables and goals (`benchmarks/generalisation.py --protocol=album_folds`):
each row is (choose, search) for `album_folds.run_album_folds`."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
for _folder in (REPO_ROOT, BENCHMARKS_DIR):  # run as a script from anywhere, or loaded from its file by a test
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import pandas as pd  # noqa: E402

import album_folds  # noqa: E402  (benchmarks/album_folds.py, beside this file)
import distill_folds  # noqa: E402  (benchmarks/distill_folds.py: issue 25's students, one per fold)
from generalisation_features import (BLOCK_MAX_PATCHES, HAND_FEATURES, LOGMEL_BLOCKS, MAXPOOLS,  # noqa: E402
                                     PATCH_SAMPLES, PENULTIMATES, RERANK_GRID, TAGGER_ROWS, TAGGRAMS,
                                     load_album_corpus, load_album_features)
from generalisation_splits import RERANK_SUFFIX  # noqa: E402
from experiments.recommended import PARTS as RECOMMENDED_PARTS  # noqa: E402
from musicsim import evaluation, rerank  # noqa: E402
from musicsim.models import fitted_class, pretrained_engine  # noqa: E402
from musicsim.models.fusion import SEARCH_PASSES, WEIGHT_GRID  # noqa: E402
from musicsim.models.pretrained_engine import ENGINE_RERANK  # noqa: E402


# Each row is (choose, search) for album_folds.run_album_folds.
def random_row() -> tuple:
    def choose(*, features, labels):
        return None

    def search(*, choice, features):
        n = len(next(iter(features.values())))
        return np.random.default_rng(np.random.SeedSequence([n, 7])).random((n, n))

    return choose, search


def fitted_row(*, model: str, key: str, checkpoint: str | None = None) -> tuple:
    """Today's fitted model (``--model=mfcc|librosa|musicnn``): fitted on the training albums' features (train
    standardisation, librosa's PCA), its own similarity, no re-ranking."""
    def choose(*, features, labels):
        cls = fitted_class(model)
        instance = cls(checkpoint=checkpoint) if checkpoint else cls()
        return instance.fit_features(features=features[key])

    def search(*, choice, features):
        vectors = choice.embed_features(features=features[key])
        return evaluation.similarity_matrix(embeddings=vectors, similarity=choice.similarity)

    return choose, search


def choose_rerank(*, vectors_of: Callable[[np.ndarray], np.ndarray], catalogs: list[np.ndarray], labels: np.ndarray,
                  grid: Sequence = RERANK_GRID):
    """The re-ranking of ``grid`` with the best mean catalog mAP over the training catalogs (none wins ties)."""
    best, best_map = None, -np.inf
    for settings in grid:
        value = album_folds.mean_catalog_map(
            catalogs=catalogs, labels=labels,
            scores_of=lambda rows: album_folds.search_scores(vectors=vectors_of(rows), settings=settings))
        if value > best_map + 1e-12:
            best, best_map = settings, value
    return best


def fusion_row(*, parts: Sequence[str] = tuple(RECOMMENDED_PARTS), choose_rerank_too: bool = False,
               rerank_grid: Sequence | None = None, n_catalogs: int = 4) -> tuple:
    """Today's fusion (``--model=fusion`` of experiments.recommended's parts): each part fitted on the training
    albums, the concatenation standardised with their statistics, block weights by ``musicsim.models.fusion``'s
    coordinate search and (``choose_rerank_too``) a re-ranking chosen on the training albums (catalogs of
    test-fold size, `album_folds.inner_catalogs`)."""
    def part_key(part: str) -> str:
        return "librosa" if part == "librosa" else f"{TAGGER_ROWS[part]}/penultimate"

    def choose(*, features, labels):
        models = []
        for part in parts:
            model, params = RECOMMENDED_PARTS[part]
            cls = fitted_class(model)
            instance = cls(checkpoint=params["musicnn_model"]) if "musicnn_model" in params else cls()
            models.append(instance.fit_features(features=features[part_key(part)]))
        embedded = {part: m.embed_features(features=features[part_key(part)]) for part, m in zip(parts, models)}
        statistics = {part: album_folds.column_statistics(embedded[part]) for part in parts}
        catalogs = album_folds.inner_catalogs(labels=labels, n_catalogs=n_catalogs)

        def vectors(rows, weights):
            return album_folds.block_vectors(features={p: v[rows] for p, v in embedded.items()}, blocks=parts,
                                             weights=weights, statistics=statistics)

        def objective(weights):
            return album_folds.mean_catalog_map(
                catalogs=catalogs, labels=labels,
                scores_of=lambda rows: album_folds.search_scores(vectors=vectors(rows, weights)))

        weights, _ = album_folds.coordinate_search(n_blocks=len(parts), objective=objective, grid=WEIGHT_GRID,
                                                   passes=SEARCH_PASSES)
        settings = rerank.RerankSettings()
        if choose_rerank_too:
            settings = choose_rerank(vectors_of=lambda rows: vectors(rows, weights), catalogs=catalogs,
                                     labels=labels, grid=rerank.default_grid() if rerank_grid is None else rerank_grid)
        return {"models": models, "statistics": statistics, "weights": weights, "rerank": settings}

    def search(*, choice, features):
        embedded = {part: m.embed_features(features=features[part_key(part)])
                    for part, m in zip(parts, choice["models"])}
        vectors = album_folds.block_vectors(features=embedded, blocks=parts, weights=choice["weights"],
                                            statistics=choice["statistics"])
        return album_folds.search_scores(vectors=vectors, settings=choice["rerank"])

    return choose, search


@dataclass(frozen=True)
class EngineVariant:
    """One way of making the pretrained engine's vector, measured as a row.

    ``blocks``: feature keys concatenated; ``weights``: fixed per block, or None (equal) / ``"search"`` (a
    coordinate search on the training albums); ``standardise``: ``catalog`` (each dimension z-scored over the
    searched catalog itself: the index's label-free step) or ``train`` (the training albums' statistics);
    ``rerank``: fixed settings, or ``"choose"`` (``RERANK_GRID``, chosen on the training albums).
    """

    blocks: tuple[str, ...]
    weights: tuple[float, ...] | str | None = None
    standardise: str = "catalog"
    rerank: rerank.RerankSettings | str = rerank.RerankSettings()
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


# The engine's vector as chosen under album folds (docs/engine-choice.md): the rows "rerank" and "patches" vary it.
ENGINE_CHOICE = EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                              rerank=rerank.RerankSettings(method="dba+aqe", k=5, alpha=3.0))
ENGINE_CHOICE_NAME = "4 penultimates + 2 maxpools + dba+aqe:k=5,alpha=3"


def shipped_engine_variant() -> tuple[EngineVariant, str]:
    """The engine as ``musicsim.models.pretrained_engine`` ships it (BLOCKS, ENGINE_RERANK, DEFAULT_MAX_PATCHES),
    as a row: catalog standardisation, its fixed weights and re-ranking; (variant, description)."""
    sampled = pretrained_engine.DEFAULT_MAX_PATCHES
    if sampled is not None and sampled not in PATCH_SAMPLES and sampled < BLOCK_MAX_PATCHES:
        raise ValueError(f"pretrained_engine.DEFAULT_MAX_PATCHES={sampled}: the benchmark samples {PATCH_SAMPLES}")
    suffix = f"@{sampled}" if sampled is not None and sampled < BLOCK_MAX_PATCHES else ""
    blocks = tuple(f"{c}/{l}" + ("" if c == pretrained_engine.LOGMEL else suffix)
                   for c, l, _ in pretrained_engine.BLOCKS)
    weights = tuple(float(w) for _, _, w in pretrained_engine.BLOCKS)
    settings = rerank.parse_settings(pretrained_engine.ENGINE_RERANK)
    description = (" + ".join(f"{b}×{w:g}" for b, w in zip(blocks, weights)) + f", rerank {pretrained_engine.ENGINE_RERANK}"
                   + f", max_patches {sampled}")
    return EngineVariant(blocks=blocks, weights=weights, rerank=settings), description


def engine_row(variant: EngineVariant, *, n_catalogs: int = 4) -> tuple:
    """(choose, search) of an `EngineVariant`: labels are read only to choose weights / re-ranking when the
    variant asks for it, on catalogs of the training albums searched as a test catalog is."""
    blocks = variant.blocks

    def statistics_for(features):
        return {b: album_folds.column_statistics(features[b]) for b in blocks}

    def choose(*, features, labels):
        statistics = statistics_for(features) if variant.standardise == "train" else None
        weights = np.ones(len(blocks)) if variant.weights is None or variant.weights == "search" \
            else np.asarray(variant.weights, np.float64)
        catalogs = album_folds.inner_catalogs(labels=labels, n_catalogs=n_catalogs)

        def vectors(rows, w):
            return album_folds.block_vectors(features={b: features[b][rows] for b in blocks}, blocks=blocks,
                                             weights=w, statistics=statistics)

        if variant.weights == "search":
            weights, _ = album_folds.coordinate_search(
                n_blocks=len(blocks), grid=variant.weight_grid,
                objective=lambda w: album_folds.mean_catalog_map(
                    catalogs=catalogs, labels=labels,
                    scores_of=lambda rows: album_folds.search_scores(vectors=vectors(rows, w))))
        settings = variant.rerank
        if settings == "choose":
            settings = choose_rerank(vectors_of=lambda rows: vectors(rows, weights), catalogs=catalogs, labels=labels)
        return {"statistics": statistics, "weights": weights, "rerank": settings}

    def search(*, choice, features):
        vectors = album_folds.block_vectors(features=features, blocks=blocks, weights=choice["weights"],
                                            statistics=choice["statistics"])
        return album_folds.search_scores(vectors=vectors, settings=choice["rerank"])

    return choose, search


def describe_choices(result: "album_folds.RowResult") -> str:
    """The per-fold choices of a row that chose something (weights, re-ranking), for the table."""
    parts = []
    for fold in result.folds:
        choice = fold.choice
        if not isinstance(choice, dict):
            continue
        text = []
        if "weights" in choice and len(choice["weights"]) > 1 and not np.all(np.asarray(choice["weights"]) == 1):
            text.append("w=" + "/".join(f"{w:g}" for w in choice["weights"]))
        settings = choice.get("rerank")
        if isinstance(settings, rerank.RerankSettings) and settings.method != "none":
            text.append(f"{settings.method} k={settings.k} a={settings.alpha:g}")
        parts.append(" ".join(text))
    if len(set(parts)) == 1:
        return parts[0] + (" (every fold)" if parts[0] else "")
    return "; ".join(p or "none" for p in parts)


def album_fold_rows(*, groups: Sequence[str]) -> list[tuple[str, str, tuple]]:
    """The rows of the album-folds table: (group, name, (choose, search)), in table order."""
    rows: list[tuple[str, str, tuple]] = []
    if "baselines" in groups:
        rows += [("baselines", "random", random_row()),
                 ("baselines", "mfcc", fitted_row(model="mfcc", key="mfcc")),
                 ("baselines", "librosa", fitted_row(model="librosa", key="librosa"))]
        rows += [("baselines", name, fitted_row(model="musicnn", key=f"{checkpoint}/penultimate",
                                                checkpoint=checkpoint)) for name, checkpoint in TAGGER_ROWS.items()]
        rows += [("baselines", "fusion", fusion_row()),
                 ("baselines", "fusion" + RERANK_SUFFIX, fusion_row(choose_rerank_too=True)),
                 ("baselines", "fusion + rerank (the index's methods: aqe/dba)",
                  fusion_row(choose_rerank_too=True, rerank_grid=RERANK_GRID))]
    if "blocks" in groups:
        for block in PENULTIMATES + TAGGRAMS + MAXPOOLS + LOGMEL_BLOCKS + ("logmel", "mfcc"):
            rows.append(("blocks", f"block {block}", engine_row(EngineVariant(blocks=(block,)))))
    if "engine" in groups:
        variants = {
            "4 penultimates": EngineVariant(blocks=PENULTIMATES),
            "4 penultimates, train standardisation": EngineVariant(blocks=PENULTIMATES, standardise="train"),
            "4 penultimates, weights searched": EngineVariant(blocks=PENULTIMATES, weights="search"),
            "MSD+MTT musicnn penultimates": EngineVariant(blocks=PENULTIMATES[:2]),
            "musicnn + vgg MTT penultimates": EngineVariant(blocks=PENULTIMATES[:2] + PENULTIMATES[3:]),
            "4 penultimates + 4 taggrams": EngineVariant(blocks=PENULTIMATES + TAGGRAMS),
            "4 penultimates + 2 maxpools": EngineVariant(blocks=PENULTIMATES + MAXPOOLS),
            "4 penultimates + 2 maxpools, train standardisation": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                               standardise="train"),
            "4 penultimates + MTT maxpool": EngineVariant(blocks=PENULTIMATES + MAXPOOLS[1:]),
            "4 penultimates + 2 maxpools (weights 0.5)": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                      weights=(1, 1, 1, 1, 0.5, 0.5)),
            "4 penultimates + 2 maxpools, weights searched": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                          weights="search"),
            "4 penultimates + 2 maxpools, re-ranking chosen": EngineVariant(blocks=PENULTIMATES + MAXPOOLS,
                                                                           rerank="choose"),
            "4 penultimates + mfcc": EngineVariant(blocks=PENULTIMATES + ("mfcc",)),
            "4 penultimates + logmel mean": EngineVariant(blocks=PENULTIMATES + LOGMEL_BLOCKS[:1]),
            "4 penultimates + logmel mean, std": EngineVariant(blocks=PENULTIMATES + LOGMEL_BLOCKS),
            "2 maxpools + logmel mean, std": EngineVariant(blocks=MAXPOOLS + LOGMEL_BLOCKS),
            "4 penultimates + 2 maxpools + logmel mean, std": EngineVariant(blocks=PENULTIMATES + MAXPOOLS
                                                                           + LOGMEL_BLOCKS),
            "4 penultimates + 2 maxpools + logmel mean, std, train standardisation": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, standardise="train"),
            "4 penultimates + 2 maxpools + logmel mean, std, weights searched": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, weights="search"),
            "two networks: MTT musicnn (penultimate, maxpool) + MSD vgg + logmel mean, std": EngineVariant(
                blocks=("MTT_musicnn/penultimate", "MTT_musicnn/maxpool", "MSD_vgg/penultimate") + LOGMEL_BLOCKS),
            "all blocks, weights searched": EngineVariant(blocks=PENULTIMATES + TAGGRAMS + MAXPOOLS + LOGMEL_BLOCKS
                                                          + ("mfcc",), weights="search"),
            "4 penultimates, re-ranking chosen": EngineVariant(blocks=PENULTIMATES, rerank="choose"),
            "4 penultimates + 2 maxpools + logmel mean, std, re-ranking chosen": EngineVariant(
                blocks=PENULTIMATES + MAXPOOLS + LOGMEL_BLOCKS, rerank="choose"),
        }
        rows += [("engine", f"pretrained: {name}", engine_row(v)) for name, v in variants.items()]
        rows.append(("engine", "pretrained: chosen, without re-ranking",
                     engine_row(dataclasses.replace(ENGINE_CHOICE, rerank=rerank.RerankSettings()))))
        rows.append(("engine", f"pretrained: chosen ({ENGINE_CHOICE_NAME})", engine_row(ENGINE_CHOICE)))
        shipped, description = shipped_engine_variant()
        rows.append(("engine", f"pretrained as shipped ({description})", engine_row(shipped)))
    if "rerank" in groups:
        for settings in RERANK_GRID[1:]:
            name = f"{settings.method}:k={settings.k},alpha={settings.alpha:g}"
            rows.append(("rerank", f"pretrained: chosen blocks + {name}",
                         engine_row(dataclasses.replace(ENGINE_CHOICE, rerank=settings))))
    if "distilled" in groups:
        rows += distilled_rows(with_hand_rows="baselines" not in groups)
    if "patches" in groups:
        for n in PATCH_SAMPLES:
            sampled = tuple(b if b.startswith("logmel") or "/" not in b else f"{b}@{n}" for b in ENGINE_CHOICE.blocks)
            rows.append(("patches", f"pretrained: chosen (with its re-ranking), max {n} patches",
                         engine_row(dataclasses.replace(ENGINE_CHOICE, blocks=sampled))))
        for n in PATCH_SAMPLES:
            rows.append(("patches", f"pretrained: 4 penultimates, max {n} patches",
                         engine_row(EngineVariant(blocks=tuple(f"{b}@{n}" for b in PENULTIMATES)))))
    return rows


ROW_GROUPS = ("baselines", "blocks", "engine", "rerank", "patches", "distilled")
DEFAULT_ROW_GROUPS = ROW_GROUPS[:-1]  # "distilled" needs a student per fold (benchmarks/distill_folds.py) first
DISTILLED = "distilled student"  # the feature key: each track embedded by the student of its own fold
DISTILLED_ROW = "distilled WaveNet (student of the engine; catalog std, cosine)"
DISTILLED_TEACHER_PLAIN = "teacher: pretrained as shipped, without its re-ranking"


def distilled_rows(*, with_hand_rows: bool = True) -> list[tuple[str, str, tuple]]:
    """Issue 25's rows: the WaveNet distilled from the engine on the training folds' audio only (each test track
    embedded by its fold's student), plain and with the engine's re-ranking, beside its teacher as shipped (and,
    ``with_hand_rows``, mfcc and librosa, which its goals compare with)."""
    engine_rerank = rerank.parse_settings(ENGINE_RERANK)

    def choose(*, features, labels):
        return None  # nothing read from labels: the student was distilled label-free

    def search_with(settings):
        def search(*, choice, features):
            vectors = album_folds.standardise(features[DISTILLED])  # the index's label-free catalog step
            return album_folds.search_scores(vectors=vectors, settings=settings)

        return search

    shipped, description = shipped_engine_variant()
    hand = [("distilled", name, fitted_row(model=name, key=name)) for name in HAND_FEATURES] if with_hand_rows else []
    return hand + [("distilled", DISTILLED_ROW, (choose, search_with(None))),
            ("distilled", f"{DISTILLED_ROW} + {ENGINE_RERANK}", (choose, search_with(engine_rerank))),
            ("distilled", DISTILLED_TEACHER_PLAIN,
             engine_row(dataclasses.replace(shipped, rerank=rerank.RerankSettings()))),
            ("distilled", f"teacher: pretrained as shipped ({description})", engine_row(shipped))]


def distilled_goals(results: list[tuple[str, "album_folds.RowResult"]]) -> list[str]:
    """Issue 25's goals for the distilled rows: ≥ librosa + 0.03, ≥ mfcc + 0.03 and ≥ 85% of the teacher's
    catalog mAP (means over folds, folds won); the plain student against the teacher without re-ranking, the
    re-ranked one against the teacher as shipped (re-ranked too)."""
    by_name = {r.name: r for _, r in results}
    plain_teacher = by_name.get(DISTILLED_TEACHER_PLAIN)
    shipped_teacher = next((r for n, r in by_name.items() if n.startswith("teacher: pretrained as shipped (")), None)
    lines = ["## Goal (issue 25): distilled ≥ librosa + 0.03, ≥ mfcc + 0.03, ≥ 85% of its teacher (mean over folds)",
             ""]
    for name, teacher in ((DISTILLED_ROW, plain_teacher), (f"{DISTILLED_ROW} + {ENGINE_RERANK}", shipped_teacher)):
        if name not in by_name:
            continue
        row = by_name[name]
        mean = row.summary()["catalog_mAP"]["mean"]
        checks = []
        for reference, offset, share in (("librosa", 0.03, 1.0), ("mfcc", 0.03, 1.0), ("teacher", 0.0, 0.85)):
            base = teacher if reference == "teacher" else by_name.get(reference)
            if base is None:
                checks.append(f"? {reference} (not run)")
                continue
            target = base.summary()["catalog_mAP"]["mean"] * share + offset
            _, won = album_folds.paired_gain(row=row, reference=base)
            label = {"teacher": "0.85 × teacher"}.get(reference, f"{reference} + 0.03")
            checks.append(f"{'≥' if mean >= target - 1e-12 else '<'} {label} = {target:.3f} "
                          f"(above {reference} on {won}/{len(row.folds)} folds)")
        met = all(c.startswith("≥") for c in checks)
        lines.append(f"- {name}: {mean:.3f} " + "; ".join(checks) + f": {'MET' if met else 'not met'}")
    return lines


def album_folds_table(results: list[tuple[str, "album_folds.RowResult"]], *, reference: str = "musicnn_msd"
                      ) -> list[str]:
    """Markdown lines: one row per result, mean ± std over folds, the mean over all queries, the gain over
    ``reference`` and, for the engine's rows, over the chosen engine (catalog mAP and PC, folds won), and what
    the row chose on its training albums."""
    by_name = {r.name: r for _, r in results}
    chosen = next((r for r in by_name.values() if r.name.startswith("pretrained: chosen (")), None)
    lines = ["| group | row | catalog mAP | P@10 | PC | pooled mAP | pooled P@10 | pooled PC | Δ mAP vs "
             f"{reference} (folds won) | Δ mAP / Δ PC vs chosen (folds won) | chosen on the training albums |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def gain(row, base) -> str:
        delta, won = album_folds.paired_gain(row=row, reference=base)
        delta_pc, won_pc = album_folds.paired_gain(row=row, reference=base, metric="PC")
        return f"{delta:+.3f} ({won}/{len(row.folds)}) / {delta_pc:+.3f} ({won_pc}/{len(row.folds)})"

    for group, result in results:
        summary = result.summary()
        cells = [f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in album_folds.FOLD_METRICS]
        cells += [f"{summary[m]['pooled']:.3f}" for m in album_folds.FOLD_METRICS]
        versus_reference = "–"
        if reference in by_name and result.name != reference:
            delta, won = album_folds.paired_gain(row=result, reference=by_name[reference])
            versus_reference = f"{delta:+.3f} ({won}/{len(result.folds)})"
        versus_chosen = gain(result, chosen) if chosen is not None and result is not chosen \
            and group in ("engine", "rerank", "patches") else "–"
        lines.append(f"| {group} | {result.name} | " + " | ".join(cells)
                     + f" | {versus_reference} | {versus_chosen} | {describe_choices(result)} |")
    return lines


def album_folds_goals(results: list[tuple[str, "album_folds.RowResult"]]) -> list[str]:
    """Issue 20's goal for the engine rows: catalog mAP ≥ musicnn_msd + 0.03 and ≥ today's fusion (both
    fusion rows), mean over folds, with the folds won."""
    by_name = {r.name: r for _, r in results}
    references = [n for n in ("musicnn_msd", "fusion", "fusion" + RERANK_SUFFIX) if n in by_name]
    lines = ["## Goal: pretrained ≥ musicnn_msd + 0.03 catalog mAP and ≥ today's fusion (mean over folds)", ""]
    if "musicnn_msd" not in by_name:
        return lines + ["- not checkable: the baselines were not run (--rows=baselines)"]
    for name, row in by_name.items():
        if not (name.startswith("pretrained: chosen (") or name.startswith("pretrained as shipped")):
            continue
        mean = row.summary()["catalog_mAP"]["mean"]
        checks = []
        for reference in references:
            target = by_name[reference].summary()["catalog_mAP"]["mean"] + (0.03 if reference == "musicnn_msd" else 0.0)
            _, won = album_folds.paired_gain(row=row, reference=by_name[reference])
            checks.append(f"{'≥' if mean >= target - 1e-12 else '<'} {reference}{' + 0.03' if reference == 'musicnn_msd' else ''} "
                          f"= {target:.3f} (beats it on {won}/{len(row.folds)} folds)")
        met = all(c.startswith("≥") for c in checks)
        lines.append(f"- {name}: {mean:.3f} " + "; ".join(checks) + f": {'MET' if met else 'not met'}")
    return lines


def run_album_folds_protocol(args: argparse.Namespace, *, command: str) -> str:
    """The album-folds benchmark: features (cached), folds, every row, ``album_folds.md`` / ``.csv``."""
    started = time.monotonic()
    paths, track_ids, albums = load_album_corpus(args.corpus)
    features, usable = load_album_features(paths=paths, track_ids=track_ids, features_dir=args.features_dir,
                                           workers=args.workers, log=lambda m: print(m, flush=True))
    albums = [albums[i] for i in usable]
    folds = album_folds.assign_album_folds(albums=albums, n_folds=args.n_folds, seed=args.fold_seed)
    test_folds, tested_note = None, []
    if "distilled" in args.row_groups:
        features[DISTILLED], test_folds = distill_folds.student_vectors_by_fold(
            runs_dir=args.distilled_runs, paths=[paths[i] for i in usable], folds=folds,
            cache_dir=os.path.join(args.features_dir, "distilled"), log=lambda m: print(m, flush=True))
        if len(test_folds) < args.n_folds:  # every row on the same folds: the comparisons stay paired
            tested_note = [f"**Partial: folds {', '.join(map(str, test_folds))} tested** (the folds whose student "
                           f"exists in {args.distilled_runs}); every row is tested on those folds only, each still "
                           "fitted on all the other folds.", ""]
    results = []
    for group, name, (choose, search) in album_fold_rows(groups=args.row_groups):
        t0 = time.monotonic()
        result = album_folds.run_album_folds(features=features, labels=albums, folds=folds, choose=choose,
                                             search=search, name=name, seeds=tuple(range(args.eval_repeats)),
                                             test_folds=test_folds)
        results.append((group, result))
        summary = result.summary()
        print(f"{name}: catalog mAP {summary['catalog_mAP']['mean']:.3f} ± {summary['catalog_mAP']['std']:.3f}, "
              f"PC {summary['PC']['mean']:.3f} ({time.monotonic() - t0:.1f}s)", flush=True)
    fold_lines = []
    for fold in range(args.n_folds):
        members = sorted({a for a, f in zip(albums, folds) if f == fold})
        fold_lines.append(f"- fold {fold}: {int((folds == fold).sum())} tracks: {', '.join(members)}")
    md = ["# Album folds: every track a query once, on albums nothing was chosen on", "",
          f"Reproduce: `{command}`", "",
          f"{len(albums)} tracks, {len(set(albums))} albums, {args.n_folds} folds (seed {args.fold_seed}, balanced by "
          "track count). Each fold is tested once: its albums are the catalog, each of its tracks a query. "
          "Whatever reads labels (a fitted transform, block weights, a re-ranking choice) sees the other folds only; "
          "catalog standardisation and DBA/AQE use the test catalog's vectors (label-free, as the index does). "
          "Cells: mean ± population std over the folds; pooled: the mean over all queries (PC weighted by queries). "
          "PC: mean over " f"{args.eval_repeats} evaluation seeds of the pair lists.", "",
          *fold_lines, "", *tested_note, *album_folds_table(results), "",
          *(album_folds_goals(results) + [""] if {"baselines", "engine"} & set(args.row_groups) else []),
          *(distilled_goals(results) + [""] if "distilled" in args.row_groups else []),
          f"Done in {(time.monotonic() - started) / 60.0:.1f} min."]
    text = "\n".join(md) + "\n"
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "album_folds.md"), "w") as f:
        f.write(text)
    records = []
    for group, result in results:
        record = {"group": group, "row": result.name, "folds": len(result.folds), "choices": describe_choices(result)}
        for metric, values in result.summary().items():
            for stat, value in values.items():
                record[f"{metric} {stat}"] = value
        for fold in result.folds:
            record[f"catalog_mAP fold{fold.fold}"] = fold.metrics["catalog_mAP"]
        records.append(record)
    pd.DataFrame.from_records(records).to_csv(os.path.join(args.output, "album_folds.csv"), index=False)
    return text
