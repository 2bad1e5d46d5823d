"""Pointer folders for models whose files ship split over several pip packages.

Each folder holds a ``config.json`` with a ``model_type`` that ``compile.sources.HF_SOURCES``
maps to the source reading it, and the packages (in order) that hold the model's files.
"""
