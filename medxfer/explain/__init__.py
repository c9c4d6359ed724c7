"""Grad-CAM maps and lesion localization scores (placeholder; filled by the engine split)."""
