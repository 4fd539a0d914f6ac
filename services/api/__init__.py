"""An OpenAI-compatible HTTP API in front of the scheduler (``flowring serve``)."""
