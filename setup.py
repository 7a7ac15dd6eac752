from setuptools import find_packages, setup

setup(
    name="musicsim",
    version="0.1.0",
    description="Content-based music similarity search (tf.estimator, WaveNet, librosa, LSTM)",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["musicsim", "musicsim.*", "data_prep", "data_prep.*",
                                    "experiments", "experiments.*"]),
    package_data={"musicsim.search": ["static/*"]},  # the web page of musicsim.search.serve
    # The same commands as the `python -m` forms.
    entry_points={"console_scripts": [
        "musicsim-prep = data_prep.build:cli",
        "musicsim-run = experiments.run:cli",
        "musicsim-report = experiments.report:cli",
        "musicsim-export = experiments.export:cli",
        "musicsim-recommended = experiments.recommended:cli",
        "musicsim-index = musicsim.index.cli:cli",
        "musicsim-search = musicsim.search.query:cli",
        "musicsim-serve = musicsim.search.serve:cli",
        "musicsim-scan = musicsim.scan:cli",
    ]},
    # Exact versions live in requirements.lock (installed by `make`); these are the direct needs.
    install_requires=[
        "tensorflow==2.15.1", "tensorflow-estimator==2.15.0", "tensorflow-ranking==0.5.5",
        "keras==2.15.0", "protobuf==4.25.9", "numpy==1.26.4", "librosa==0.11.0", "soundfile==0.14.0",
        "scikit-learn==1.9.1", "pandas==3.0.6", "absl-py==2.5.1", "tqdm==4.70.1", "faiss-cpu==1.15.1",
        "apache-beam[tfrecord]==2.77.0", "pyarrow==25.0.1", "matplotlib==3.11.2",
        "mutagen==1.48.1", "filelock==4.2.11",
    ],
)
