"""The stages of ``benchmarks/device_run.py``, which runs each in its own subprocess.

``context`` holds what every stage gets (``StageContext``: arguments, time limit, a result saved at every change;
the shared training settings); one module a stage: ``cuda_tests``, ``methods_amp``, ``throughput``, ``clustering``
(the ``pseudo_labels`` stage), ``ranking`` (the ``evaluation`` stage) and ``real_data``; ``reports`` writes
device_run.json and device_run.md. Not a script: ``device_run.py`` puts ``benchmarks/`` on the path and imports it.
"""
