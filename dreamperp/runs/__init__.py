"""Run folders and checkpoints: what ``dreamperp train`` writes and every other command reads.

Below training and export, so both use one definition of the folder layout
(:mod:`dreamperp.runs.folder`) and of the checkpoint format (:mod:`dreamperp.runs.checkpoint`).
"""
