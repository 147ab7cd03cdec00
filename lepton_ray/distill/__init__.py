"""Distillation: the loss registry and objective (`losses/`), and the teacher outputs cached once per sweep (`teacher_cache.py`)."""
