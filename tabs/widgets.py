"""Input widgets that hand every value to the handler in a form it can check, or say which
field could not be read.

Gradio's own preprocessing runs before a handler and fails unclearly on input that skips the
UI: a NaN in a whole-number field crashes in `int(round(nan))` (the caller sees a bare error),
2**70 passes, an out-of-range value is refused without naming the field, and an image that is
not one, or a decompression bomb, fails inside Pillow with "verbose error reporting" off.

- `Number`, `Slider`, `Radio`, `Dropdown`: the value reaches the handler as sent; the handler
  checks it with core.validate, which names the field and the allowed range or choices (Gradio's
  own check of a choice echoes the whole value, however long, into its message).
- `Image`, `ImageEditor`: Gradio decodes the image; if that fails, a `gr.Error` names the field.

They look and behave in the browser exactly like the Gradio components they extend
(`is_template`: the same front-end component).
"""
from __future__ import annotations

import gradio as gr


def _label(block) -> str:
    return str(getattr(block, "label", None) or "An image field")


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):  # checked by the handler (core.validate)
        return payload


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):  # checked by the handler (core.validate)
        return payload


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):  # checked by the handler (core.validate.choice)
        return payload


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):  # checked by the handler (core.validate.choice / record_id)
        return payload


class _DecodedImage:
    """Gradio's image decoding, with a clear error naming the field when it fails; the same
    front-end component as the Gradio class it is mixed into."""

    def _gradio_class(self) -> str:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.")).__name__.lower()

    get_block_name = get_block_class = _gradio_class

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - anything Pillow or numpy raise on a bad file
            raise gr.Error(f"{_label(self)}: the image could not be read (not an image, truncated or corrupt, "
                           "or too many pixels).", print_exception=False) from None


class Image(_DecodedImage, gr.Image):
    pass


class ImageEditor(_DecodedImage, gr.ImageEditor):
    pass
