"""A test helper: a function built once in its own TF graph, evaluated on numpy inputs."""
from __future__ import annotations

from typing import Callable

import tensorflow as tf


class GraphRunner:
    """A function built once in its own graph on placeholders, evaluated on numpy inputs.

    Parameters
    ----------
    build : ``build(*placeholders) -> tensor or tuple of tensors``
    specs : (dtype, shape) of each placeholder
    """

    def __init__(self, build: Callable, specs: list[tuple[tf.DType, list]]):
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.set_random_seed(0)
            self.placeholders = [tf.compat.v1.placeholder(dtype, shape) for dtype, shape in specs]
            self.outputs = build(*self.placeholders)
            self.session = tf.compat.v1.Session(graph=self.graph)
            self.session.run(tf.compat.v1.global_variables_initializer())

    def __call__(self, *values):
        return self.session.run(self.outputs, dict(zip(self.placeholders, values)))

    def close(self) -> None:
        self.session.close()
