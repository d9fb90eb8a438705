"""The small library behind the book: data, labels, models, protocols, metrics, saliency.

One concern per module; notebooks call into it and hold no logic of their own that another
notebook or a test needs.
"""

import warnings as _warnings

# tqdm.auto falls back to text bars in papermill kernels without ipywidgets; the fallback
# is what we want, the warning about it is noise on every executed page.
_warnings.filterwarnings("ignore", message="IProgress not found")
