"""The world's vocabulary and its caption grammar, and the fixed held-out split.

A caption is
    a [COLOUR] SHAPE MOTION [DIRECTION] [on a BACKGROUND background]
with MOTION "bouncing" (the object bounces off the picture's borders) or "moving ... out of view and
back" (it bounces off walls outside the picture, so it leaves and comes back), for example
"a red circle bouncing to the left on a grey background" or
"a square moving up out of view and back". Brackets mark the parts a caption may leave out; a left-out
part is simply unsaid (the video still has some colour, direction and background), so short prompts
such as "a blue square bouncing" are in the training distribution.

The direction is the object's initial direction of motion along its main axis (the world generator
keeps it for the first `WorldConfig.free_frames` frames). Held out for the prompt-following evaluation:
the 12 (colour, shape, direction) combinations of `HELD_OUT`, which training never renders.
"""
from __future__ import annotations

import itertools
import re

# Object colours (sRGB), chosen far apart so that nearest-colour classification of a generated video
# is unambiguous, and far from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230),
    "yellow": (240, 215, 40), "purple": (150, 60, 200), "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"grey": (128, 128, 128), "black": (16, 16, 16), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = ("bouncing", "leaving")  # in the caption: "bouncing", "moving ... out of view and back"

# The 12 (colour, shape, direction) combinations never shown in training: the i-th is
# (COLOURS[i % 6], SHAPES[i % 3], DIRECTIONS[i % 4]), so every colour is held out twice, every shape 4
# times and every direction 3 times, and each single attribute still appears in training.
HELD_OUT: tuple[tuple[str, str, str], ...] = tuple(
    (list(COLOURS)[i % 6], SHAPES[i % 3], DIRECTIONS[i % 4]) for i in range(12))

_DIRECTION_WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


def combinations(split: str) -> list[tuple[str, str, str]]:
  """The (colour, shape, direction) combinations a split renders: "train" (60) or "heldout" (12)."""
  if split == "heldout":
    return list(HELD_OUT)
  if split == "train":
    return [c for c in itertools.product(COLOURS, SHAPES, DIRECTIONS) if c not in HELD_OUT]
  raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def caption(shape: str, motion: str, *, colour: str | None = None, direction: str | None = None,
            background: str | None = None) -> str:
  """The caption of a scene; None leaves that part unsaid."""
  noun = ([colour] if colour else []) + [shape]
  words = ["an" if noun[0][0] in "aeiou" else "a"] + noun
  where = [_DIRECTION_WORDS[direction]] if direction else []
  if motion == "bouncing":
    words += ["bouncing"] + where
  elif motion == "leaving":
    words += ["moving"] + where + ["out", "of", "view", "and", "back"]
  else:
    raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
  if background:
    words += ["on", "a", background, "background"]
  return " ".join(words)


def parse_caption(text: str) -> dict[str, str | None]:
  """What a caption says: {"colour", "shape", "direction", "motion", "background"}, None where unsaid
  (words outside the grammar are ignored)."""
  words = re.findall(r"[a-z]+", text.lower())
  found = lambda names: next((w for w in words if w in names), None)  # noqa: E731
  return {"colour": found(COLOURS), "shape": found(SHAPES), "direction": found(DIRECTIONS),
          "motion": "bouncing" if "bouncing" in words else "leaving" if "moving" in words else None,
          "background": found(BACKGROUNDS)}


def vocabulary() -> list[str]:
  """Every word the grammar can produce, sorted (the word tokenizer's vocabulary)."""
  words = set()
  for shape, motion, colour, direction, background in itertools.product(
      SHAPES, MOTIONS, list(COLOURS), DIRECTIONS, list(BACKGROUNDS)):
    words.update(caption(shape, motion, colour=colour, direction=direction, background=background).split())
  return sorted(words)
