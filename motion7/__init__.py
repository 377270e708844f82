"""``stexport.motion7``: the procedural motion7 dataset and the two small models trained on it, apart from the
export spine.

* `stexport.motion7.data`: the dataset (shapes moving over textured backgrounds; the label is the kind of
  motion), also importable as ``stexport.motion``.
* `stexport.motion7.models`: registers ``movinet_a0_stream_motion7`` and ``tsm_mobilenetv2_online_motion7``
  (weights shipped in ``stexport/models/weights/``); imported by `stexport.models` with the other families.
* `stexport.motion7.train`: ``python -m stexport.motion7.train --model M`` retrains them and `evaluate` scores a
  model or an exported artifact (also importable as ``stexport.train``).
"""
