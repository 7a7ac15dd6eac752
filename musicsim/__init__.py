"""musicsim: content-based music similarity search (reproducing and extending
"Music Similarity Search and Beyond")."""

__version__ = "0.1.0"

import os as _os

# Silence TensorFlow's CUDA-factory start-up noise; oneDNN stays on (2.7x faster on CPU).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
