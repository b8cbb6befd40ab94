"""Errors with a message meant for the user (CLI stderr line, Gradio error)."""


class SsavizError(Exception):
    """A problem the user can fix; str(error) is one clear sentence."""


class CheckpointError(SsavizError):
    pass


class ImageError(SsavizError):
    pass


class NetworkRequired(SsavizError):
    pass
