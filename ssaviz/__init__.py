"""ssaviz: see what attention modules in CNNs attend to.

The web app (``app.py``) and the command line (``python -m ssaviz``) are thin
layers over this package; ``ssaviz.service.Service`` is the entry point for
everything the app does.
"""

__version__ = "0.1.0"
