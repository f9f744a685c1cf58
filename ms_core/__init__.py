"""ms_core: the logic of the MS MRI dashboard, importable without Streamlit.

Axis convention everywhere: arrays are indexed (x, y, z) as nibabel loads them; world coordinates
are RAS+ millimetres given by each image's 4x4 affine. See :mod:`ms_core.foundation.io`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
