"""The data layer's leaves: from audio files to a prepared dataset (paper 4.3 pre-processing, 5.1.1).

- ``musicsim.data.audio``: the one decoder (decode, mono, resample, excerpt, mean pool);
  ``musicsim.data.audio_files``: a file's header and raw frames, the decode errors;
- ``musicsim.data.tags``: a library file's tags;
- ``musicsim.data.windows``: a long signal cut into windows with their context;
- ``musicsim.data.tfrecords``: the prepared-track record format; ``musicsim.data.dataset``: a prepared
  dataset folder's layout.

Leaves: they import nothing above them (features, models, training, index, search); ``data_prep``
writes datasets through them.
"""
