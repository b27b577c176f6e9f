"""The inspection viewer (`crackloc serve`): `logic` (pure, no gradio) and `app` (the Gradio page)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the server makes no calls home
