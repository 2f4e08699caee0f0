"""Scenes of coloured shapes for the synthetic dataset: sampling, drawing, and the text about them.

Built to be learnable by a tiny model in minutes: a small closed vocabulary (4 shapes, 5 colours,
3 backgrounds, counts 1-3, 5 positions, 2 sizes), large flat-coloured shapes, and captions, answers
and conversations produced by a fixed grammar from the scene alone, so everything said about an
image can be read off its pixels. Object coordinates are continuous and jittered, so no two drawn
images repeat and a model has to look rather than memorise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
# Where a lone shape sits, as fractions of the side; a scene with 2-3 shapes scatters them.
POSITIONS = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
HALF_SIZE = {"large": 0.22, "small": 0.12}  # half the shape's side, as a fraction of the image side
COUNT_WEIGHTS = {1: 0.5, 2: 0.25, 3: 0.25}  # lone shapes carry the position and size questions
NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
# What a few annotators say instead of the canonical answer (VQA answers are noisy, not wrong).
SYNONYMS = {"gray": "grey", "center": "middle", "purple": "violet"}
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges at any output size


@dataclass(frozen=True)
class Shape:
    x: float  # centre, fraction of the side
    y: float
    half: float  # half side, fraction of the side


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    count: int
    size: str  # "large" only for a lone shape
    position: str | None  # only for a lone shape
    objects: tuple[Shape, ...]


def sample_scene(rng: random.Random) -> Scene:
    """A random scene: one kind and colour of shape, 1-3 copies, on a plain background."""
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    background = rng.choice(list(BACKGROUNDS))
    count = rng.choices(list(COUNT_WEIGHTS), weights=list(COUNT_WEIGHTS.values()))[0]
    if count == 1:
        size, position = rng.choice(list(HALF_SIZE)), rng.choice(list(POSITIONS))
        cx, cy = POSITIONS[position]
        half = HALF_SIZE[size] + rng.uniform(-0.02, 0.02)
        objects = (Shape(cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04), half),)
    else:
        size, position = "small", None
        objects = _scatter(rng, count)
    return Scene(shape, colour, background, count, size, position, objects)


def _scatter(rng: random.Random, count: int) -> tuple[Shape, ...]:
    """``count`` small shapes at random places that neither overlap nor leave the image."""
    while True:
        placed = []
        for _ in range(count):
            half = HALF_SIZE["small"] + rng.uniform(-0.015, 0.015)
            for _attempt in range(50):
                x, y = rng.uniform(half + 0.03, 1 - half - 0.03), rng.uniform(half + 0.03, 1 - half - 0.03)
                if all(max(abs(x - o.x), abs(y - o.y)) > half + o.half + 0.04 for o in placed):
                    placed.append(Shape(x, y, half))
                    break
        if len(placed) == count:
            return tuple(placed)


def draw_scene(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels."""
    canvas_side = size * SUPERSAMPLE
    image = Image.new("RGB", (canvas_side, canvas_side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    for obj in scene.objects:
        x, y, h = obj.x * canvas_side, obj.y * canvas_side, obj.half * canvas_side
        if scene.shape == "circle":
            draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
        elif scene.shape == "square":
            draw.rectangle((x - h * 0.9, y - h * 0.9, x + h * 0.9, y + h * 0.9), fill=fill)
        elif scene.shape == "triangle":
            draw.polygon([(x, y - h), (x + h, y + h * 0.8), (x - h, y + h * 0.8)], fill=fill)
        else:  # cross: two bars a third of the side thick
            bar = h / 3
            draw.rectangle((x - h, y - bar, x + h, y + bar), fill=fill)
            draw.rectangle((x - bar, y - h, x + bar, y + h), fill=fill)
    return image.resize((size, size), Image.BOX)


# -- text -----------------------------------------------------------------------------------------
WHERE_PHRASES = {
    "left": " on the left",
    "right": " on the right",
    "top": " at the top",
    "bottom": " at the bottom",
    "center": " in the center",
}
CAPTION_TEMPLATES = (
    "{things}{where} on a {background} background",
    "a {background} picture with {things}{where}",
    "{things} drawn{where} over {background}",
    "a picture of {things}{where}",
    "there {verb} {things}{where} on {background}",
)


def noun_phrase(scene: Scene) -> str:
    """``a large red circle`` / ``three blue squares``."""
    if scene.count == 1:
        return f"a {scene.size} {scene.colour} {scene.shape}"
    return (
        f"{NUMBER_WORDS[scene.count]} {scene.colour} {scene.shape}{'es' if scene.shape == 'cross' else 's'}"
    )


def captions(scene: Scene) -> list[str]:
    """All grammar variants of the scene's caption, one per template."""
    where = WHERE_PHRASES[scene.position] if scene.position else ""
    verb = "is" if scene.count == 1 else "are"
    things = noun_phrase(scene)
    return [
        t.format(things=things, where=where, background=scene.background, verb=verb)
        for t in CAPTION_TEMPLATES
    ]


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    question_type: str  # VQAv2-style question prefix, used to group accuracies
    answer_type: str  # "yes/no" | "number" | "other", as in VQAv2


def plural(shape: str) -> str:
    return shape + ("es" if shape == "cross" else "s")


def all_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """Every question the scene can answer (position and size only for a lone shape)."""
    lone = scene.count == 1
    the = f"the {scene.shape}" if lone else f"the {plural(scene.shape)}"
    questions = [
        QA(f"what color {'is' if lone else 'are'} {the}?", scene.colour, "what color", "other"),
        QA("what shape is shown?", scene.shape, "what shape", "other"),
        QA(f"how many {plural(scene.shape)} are there?", str(scene.count), "how many", "number"),
        QA("what color is the background?", scene.background, "what color", "other"),
    ]
    if lone:
        questions.append(QA(f"where is {the}?", scene.position, "where is the", "other"))
        questions.append(QA(f"is {the} large or small?", scene.size, "is the", "other"))
    # yes/no, balanced: ask about the true colour or a wrong one
    asked = scene.colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != scene.colour])
    answer = "yes" if asked == scene.colour else "no"
    questions.append(QA(f"is there a {asked} {scene.shape}?", answer, "is there a", "yes/no"))
    return questions


def human_answers(
    answer: str, rng: random.Random, annotators: int = 10, synonym_rate: float = 0.1
) -> list[str]:
    """What ``annotators`` people answer: the canonical answer, a synonym now and then."""
    synonym = SYNONYMS.get(answer)
    return [synonym if synonym and rng.random() < synonym_rate else answer for _ in range(annotators)]
