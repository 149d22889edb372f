"""The prompt-row type shared by the data loaders (:mod:`npo_lab.llm.data`) and the synthetic tasks
(:mod:`npo_lab.llm.synthetic`): both import it from here, so neither imports the other's internals."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

IMAGE_MARKER = "<image>"
"""Where one image goes in a question (the geometry3k convention of verl and EasyR1; MMFineReason uses it too)."""


@dataclass(frozen=True)
class Example:
    """One prompt row.

    Attributes:
        index: the row's 0-based index in its source (for error messages).
        question: the question text, ``<image>`` markers kept.
        answer: the ground-truth answer as text.
        images: RGB images, fully loaded (no open file handles).
        columns: the row's columns except the image column (question and answer included, as stored), for
            custom reward functions.
    """

    index: int
    question: str
    answer: str
    images: tuple[Image.Image, ...]
    columns: dict
