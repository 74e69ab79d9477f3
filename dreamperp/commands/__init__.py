"""The commands layer's one-command modules (docs/design.md §1): each turns parsed arguments into a
call of the library below it, with its input checks first (before any slow loading, so a bad flag
costs nothing and leaves nothing behind), then numbered steps, in the manner of diffusers' pipelines.

- :mod:`.train`: ``dreamperp train`` (start, resume or ``--run-dir``; trains, then exports);
- :mod:`.video`: ``dreamperp video``, a turntable of a run (:mod:`dreamperp.export.video`);
- :mod:`.render`: ``dreamperp render``, a run at given poses (:mod:`dreamperp.export.render`);
- :mod:`.tiny_model`: ``dreamperp tiny-model``, a tiny random pipeline (:mod:`dreamperp.models.tiny`);
- :mod:`.export`: ``dreamperp export``, a run's mesh and its fidelity (:mod:`dreamperp.export.mesh`);

The commands that are packages of their own (``batch/``, ``doctor/``, ``viewer/``), ``sample`` and
the argument parser ``cli`` are in the same layer.
"""
