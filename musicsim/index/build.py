"""Building and updating a saved index from embeddings files (what ``python -m musicsim.index`` runs).

``build_index`` checks that the embeddings come from the run they name (or the one given): it must
exist, be of the file's model and make embeddings of the file's dimension; the index records that
run, so a query by audio file is embedded by the same model.

``--rerank`` chooses the label-free re-ranking the index applies (``musicsim.rerank``): ``auto``
(the default) is the model's fixed setting, never a choice made per catalog: for the ``pretrained``
engine ``musicsim.models.pretrained_engine.ENGINE_RERANK`` (fixed in the code, chosen under album
folds), for every other model none. (A run's ``--rerank=auto`` record, chosen on a few dozen eval
tracks, is no longer served: a DBA picked by a 0.003 margin on 35 tracks lowered the test split from
0.470 to 0.416.) ``none`` is none, or a setting such as ``dba+aqe:k=3,alpha=3``.

``--standardise`` (catalog standardisation, see ``musicsim.index.backends``) defaults to on for the
``pretrained`` engine (with its dimension weights) or when dimension weights are given, else off.

``build_index_from_vectors`` is the same for vectors in memory (what ``musicsim.scan`` uses).
These functions write without locking: their callers hold ``musicsim.index.lock.index_lock``
(the command line does).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from musicsim import rerank as reranking
from musicsim.similarity import SIMILARITIES
from musicsim.index import registry
from musicsim.index.backends import IndexBackend
from musicsim.index.embeddings_io import load_embeddings, read_provenance, run_embedding_dim, run_similarity
from musicsim.index.registry import DEFAULT_BACKEND, backend_class
from musicsim.index.storage import check_output_directory
from musicsim.index.vectors import check_index_rerank
from musicsim.rundir import read_run_info

# The engine whose index standardises over its catalog and re-ranks as it says, by default.
PRETRAINED_ENGINE = "pretrained"

RERANK_CHOICES = ("auto", "none")  # or a setting in musicsim.rerank.parse_settings's syntax


def parse_rerank_option(text: str) -> reranking.RerankSettings | None:
    """``--rerank``'s value: None for ``auto`` (decided once the run is known), else the settings.

    Raises
    ------
    ValueError
        For a value that is neither ``auto``, ``none`` nor a valid setting.
    """
    text = str(text).strip()
    if text == "auto":
        return None
    try:
        return reranking.parse_settings(text)
    except ValueError as error:
        raise ValueError(f"--rerank={text}: {error} (or auto, none)") from None


def model_rerank(*, model: dict[str, Any]) -> reranking.RerankSettings:
    """``--rerank=auto``: the model's fixed re-ranking, never one chosen per catalog. The ``pretrained``
    engine's is ``musicsim.models.pretrained_engine.ENGINE_RERANK``; every other model's is none (what a
    run recorded was chosen on its small eval split, within that split's noise: see the module docstring)."""
    if model.get("name") != PRETRAINED_ENGINE:
        return reranking.RerankSettings()
    try:
        from musicsim.models.pretrained_engine import ENGINE_RERANK  # why here: it imports TensorFlow
    except ImportError:  # an installation without the engine's module
        return reranking.RerankSettings()
    return reranking.parse_settings(ENGINE_RERANK)


def resolve_rerank(*, option: reranking.RerankSettings | None, model: dict[str, Any], similarity: str,
                   backend: str) -> reranking.RerankSettings:
    """The re-ranking an index applies: the settings given, else (``option`` None: ``auto``) the model's
    fixed one (``model_rerank``).

    Settings given that the index cannot apply raise ValueError (``check_index_rerank``); a model's own that
    it cannot apply (a euclidean or milvus index) is warned about and replaced by none, so ``auto`` never
    makes a build fail.
    """
    reranks = backend_class(backend).reranks
    if option is not None:
        return check_index_rerank(settings=option, similarity=similarity, backend=backend, reranks=reranks)
    fixed = model_rerank(model=model)
    try:
        return check_index_rerank(settings=fixed, similarity=similarity, backend=backend, reranks=reranks)
    except ValueError as error:
        warnings.warn(f"the {model.get('name')} engine re-ranks with {fixed.to_json()}, which this index cannot "
                      f"apply ({error}); building it without re-ranking")
        return reranking.RerankSettings()


def engine_dimension_weights(*, model: dict[str, Any], dim: int) -> np.ndarray | None:
    """The per-dimension weights [dim] the index applies after standardising a model's vectors: the ``pretrained``
    engine's ``dimension_weights()`` (None for other models, when the engine's module is absent, or when the
    engine's default blocks make another dimension than the vectors': then a warning says so)."""
    if model.get("name") != PRETRAINED_ENGINE:
        return None
    try:
        from musicsim.models.pretrained_engine import raw_engine  # why here: it imports TensorFlow
    except ImportError:
        return None
    weights = np.asarray(raw_engine().dimension_weights(), dtype=np.float64)
    if weights.shape != (dim,):
        warnings.warn(f"the pretrained engine's default blocks weigh {len(weights)} dimensions but the vectors have "
                      f"{dim}: standardising without block weights")
        return None
    return weights


def resolve_standardise(*, option: bool | None, model: dict[str, Any], dimension_weights: np.ndarray | None,
                        dim: int) -> tuple[bool, np.ndarray | None]:
    """Whether an index of ``dim``-d vectors standardises, and by which weights: ``option`` when given
    (True / False), else on for the ``pretrained`` engine or when ``dimension_weights`` are given. Weights
    default to the engine's."""
    if dimension_weights is None and option is not False:
        dimension_weights = engine_dimension_weights(model=model, dim=dim)
    standardise = option if option is not None else (model.get("name") == PRETRAINED_ENGINE
                                                     or dimension_weights is not None)
    if not standardise:
        if option is False and dimension_weights is not None and model.get("name") != PRETRAINED_ENGINE:
            raise ValueError("dimension weights apply after catalog standardisation: drop --nostandardise")
        return False, None
    return True, dimension_weights


def _resolve_model(*, embeddings: str, dim: int, file_models: Sequence[str], model_dir: str | None,
                   model_name: str | None) -> dict[str, Any]:
    """The model record of an index built from ``embeddings`` ([N, ``dim``] vectors): the run
    given, else the one the file names; the run must exist, be the file's model and make
    ``dim``-d embeddings.

    Returns
    -------
    dict
        ``name``, ``model_dir`` (absolute), ``dim``, ``similarity`` (the run's), ``embeddings``;
        entries that are unknown are left out.
    """
    provenance = read_provenance(embeddings)
    source = "--model_dir"
    if model_dir is None and provenance["model_dir"]:
        model_dir, source = provenance["model_dir"], f"the metadata of {embeddings}"
    names = sorted(set(file_models) | ({provenance["model"]} if provenance["model"] else set()))
    if len(names) > 1:
        raise ValueError(f"{embeddings}: embeddings come from several models {names}; build one index per model")
    if model_name and names and names[0] != model_name:
        raise ValueError(f"--model={model_name} but {embeddings} says its embeddings come from {names[0]!r}")
    model: dict[str, Any] = {"name": model_name or (names[0] if names else None),
                             "similarity": provenance["similarity"], "embeddings": os.path.abspath(embeddings)}
    if model_dir is not None:
        model_dir = os.path.abspath(model_dir)
        try:
            info = read_run_info(model_dir)
        except FileNotFoundError as error:
            hint = "" if source == "--model_dir" else "; name the run with --model_dir=RUN"
            raise FileNotFoundError(f"the run {model_dir} (from {source}) cannot be used: {error}{hint}") from None
        run_name = str(info["model"])
        if model["name"] and model["name"] != run_name:
            raise ValueError(f"{embeddings} holds {model['name']!r} embeddings but {model_dir} is a {run_name!r} run")
        run_dim = run_embedding_dim(model_dir=model_dir)
        if run_dim != dim:
            raise ValueError(f"dimension mismatch: {embeddings} holds {dim}-d embeddings but the run {model_dir} "
                             f"({run_name}) makes {run_dim}-d ones; were they exported from another run?")
        model.update(name=run_name, model_dir=model_dir, dim=run_dim,
                     similarity=run_similarity(model_dir=model_dir) or model["similarity"])
    return {key: value for key, value in model.items() if value is not None}


def _read_with_model(*, embeddings: str, model_dir: str | None, model_name: str | None
                     ) -> tuple[list[str], np.ndarray, dict[str, list[Any]], dict[str, Any]]:
    """An embeddings file (``load_embeddings``) and the model record of its vectors (``_resolve_model``);
    the file's ``model`` column goes into the record, not into the tracks' metadata."""
    track_ids, vectors, metadata = load_embeddings(embeddings)
    file_models = sorted(set(str(m) for m in metadata.pop("model", []) if m is not None))
    model = _resolve_model(embeddings=embeddings, dim=int(vectors.shape[1]), file_models=file_models,
                           model_dir=model_dir, model_name=model_name)
    return track_ids, vectors, metadata, model


def build_index_from_vectors(*, output: str, track_ids: Sequence[str], vectors: np.ndarray,
                             metadata: dict[str, Sequence[Any]] | None = None, similarity: str = "cosine",
                             model: dict[str, Any] | None = None, standardise: bool | None = None,
                             dimension_weights: np.ndarray | None = None, approximate: str | None = None,
                             overwrite: bool = False, backend: str = DEFAULT_BACKEND, uri: str | None = None,
                             collection: str | None = None, rerank: str = "auto") -> IndexBackend:
    """Build an index of ``track_ids`` [N] with raw ``vectors`` [N, D] and save it to ``output`` (atomically).

    Parameters
    ----------
    output : str
        The index directory: absent, empty or an index (anything else only with ``overwrite``).
    track_ids, vectors, metadata
        The tracks, their raw vectors and their metadata columns (``path``, ``group``, ``title``, ...).
    similarity : {'cosine', 'euclidean'}
    model : dict, optional
        What made the vectors (``name``, ``model_dir``, ``version``, ...): recorded, checked on add.
    standardise : bool, optional
        Catalog standardisation; None: on for the ``pretrained`` engine or with ``dimension_weights``.
    dimension_weights : np.ndarray [D], optional
        Weights after standardisation (default: the engine's, for ``pretrained``).
    approximate, backend, uri, collection, overwrite, rerank
        As for ``build_index``. With ``backend='milvus'`` and ``overwrite``, the collection the folder named
        before is dropped once the new one is complete and the folder names it.

    Returns
    -------
    IndexBackend
        The saved (and closed) index; its ``version`` is the one written.
    """
    cls = backend_class(backend)
    location = cls.check_location(uri=uri, collection=collection)
    model = dict(model or {})
    rerank_settings = resolve_rerank(option=parse_rerank_option(rerank), model=model, similarity=similarity,
                                     backend=backend)
    standardise, dimension_weights = resolve_standardise(option=standardise, model=model,
                                                         dimension_weights=dimension_weights,
                                                         dim=int(np.shape(vectors)[1]) if np.ndim(vectors) == 2 else 0)
    output = os.path.abspath(output)
    check_output_directory(directory=output, overwrite=overwrite)
    index = cls.create(output=output, overwrite=overwrite, location=location, track_ids=track_ids, vectors=vectors,
                       similarity=similarity, metadata=metadata,
                       model={key: value for key, value in model.items() if key != "similarity"},
                       approximate=approximate, standardise=standardise, dimension_weights=dimension_weights,
                       rerank=rerank_settings)
    try:
        index.save(output, overwrite=overwrite)
    finally:
        index.close()
    return index


def build_index(*, embeddings: str, output: str, similarity: str | None = None, approximate: str | None = None,
                model_dir: str | None = None, model_name: str | None = None, overwrite: bool = False,
                backend: str = DEFAULT_BACKEND, uri: str | None = None, collection: str | None = None,
                rerank: str = "auto", standardise: bool | None = None,
                dimension_weights: np.ndarray | None = None) -> IndexBackend:
    """Build an index from an embeddings file and save it to ``output``.

    The model is ``model_dir`` when given, else the run the file names (a parquet's or a
    ``.meta.json``'s ``model_dir``, or the run folder holding an ``embeddings.npz``); it must exist,
    and make embeddings of the file's dimension. ``similarity`` defaults to the run's (else cosine).
    ``backend='milvus'`` puts the vectors in the Milvus ``collection`` at ``uri`` (a ``PATH.db``
    Milvus Lite file or ``http://host:19530``), and ``output`` records where. ``rerank`` is ``auto``
    (the model's fixed re-ranking, see ``model_rerank``), ``none`` or a ``musicsim.rerank`` setting;
    ``standardise`` None is on for the ``pretrained`` engine or with ``dimension_weights``. The index
    records both in its config.json.

    Raises
    ------
    ValueError
        For a bad file, a run of another model or dimension, or an ``output`` that is a folder
        other than an index (unless ``overwrite``).
    FileNotFoundError
        For a missing file or run.
    """
    backend_class(backend)
    parse_rerank_option(rerank)
    check_output_directory(directory=os.path.abspath(output), overwrite=overwrite)  # before the expensive part
    track_ids, vectors, metadata, model = _read_with_model(embeddings=embeddings, model_dir=model_dir,
                                                           model_name=model_name)
    if similarity is None:
        similarity = model.get("similarity") if model.get("similarity") in SIMILARITIES else "cosine"
    return build_index_from_vectors(output=output, track_ids=track_ids, vectors=vectors, metadata=metadata,
                                    similarity=similarity, model=model, standardise=standardise,
                                    dimension_weights=dimension_weights, approximate=approximate,
                                    overwrite=overwrite, backend=backend, uri=uri, collection=collection,
                                    rerank=rerank)


def add_to_index(*, index_dir: str, embeddings: str, replace: bool = False,
                 model_dir: str | None = None) -> tuple[IndexBackend, int, int]:
    """Add the tracks of an embeddings file to a saved index and save it again (atomically).

    The file must come from the index's model (same checks as ``build_index``). Ids already in
    the index raise ValueError, or with ``replace`` have their vector and metadata replaced. The index
    keeps its re-ranking; with ``dba`` the augmentation is recomputed over the whole catalog.

    Returns
    -------
    index : IndexBackend
        The updated index (closed).
    added : int
        New tracks.
    replaced : int
        Tracks that were in the index already.
    """
    index = registry.open(index_dir)
    track_ids, vectors, metadata, model = _read_with_model(embeddings=embeddings, model_dir=model_dir,
                                                           model_name=None)
    for key in ("name", "model_dir"):
        if key in model and key in index.model and model[key] != index.model[key]:
            raise ValueError(f"{embeddings} comes from {key}={model[key]!r} but the index {index_dir} holds "
                             f"embeddings of {key}={index.model[key]!r}")
    if vectors.shape[1] != index.dim:
        raise ValueError(f"dimension mismatch: {embeddings} holds {vectors.shape[1]}-d embeddings, the index "
                         f"{index_dir} {index.dim}-d ones")
    present = [t for t in track_ids if t in index]
    if present and not replace:
        raise ValueError(f"{embeddings}: {len(present)} track ids are already in the index {index_dir}, e.g. "
                         f"{present[:3]}; pass --replace to replace them")
    try:
        index.add(track_ids=track_ids, vectors=vectors, metadata=metadata, replace=replace)
        index.save(index_dir)
    finally:
        index.close()
    return index, len(track_ids) - len(present), len(present)


def remove_from_index(*, index_dir: str, track_ids: Sequence[str]) -> IndexBackend:
    """Remove tracks from a saved index and save it again (atomically); unknown ids raise ValueError.
    The index keeps its re-ranking; with ``dba`` the augmentation is recomputed over the whole catalog."""
    index = registry.open(index_dir)
    try:
        index.remove(track_ids=track_ids)
        index.save(index_dir)
    finally:
        index.close()
    return index
