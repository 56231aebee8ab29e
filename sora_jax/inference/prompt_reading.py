"""Reading the moving-shapes attributes out of a prompt as people type it.

Users write 'a crimson ball drifts up and to the right' or 'a cube zooms from left to right',
not the grammar's 'a ... red circle moves up-right slowly ...'. `read_attributes` maps the
words of such a prompt onto the grammar (sora_jax.data.shapes):

- synonyms of the grammar's words (colour names and '-ish' adjectives, nouns of round, square
  and triangular things, size and speed adverbs, texture words); plurals of shape nouns;
- directions as parts: every vertical word (up, top, upper, rises, falls, ...) and horizontal
  word (left, rightwards, east, ...) adds one axis, so 'up and to the right', 'towards the top
  left' and 'to the lower right corner' all read as up-right / up-left / down-right; words
  after 'from' or 'away from' name where the shape starts, so 'from left to right' is right
  and 'in from the top' is down; on each axis the destination wins over the start;
- motion verbs that imply a speed ('zooms' quickly, 'drifts' slowly) give the speed when no
  speed word is written.

Words that set nothing are returned (in order) so that callers can report them; nothing here
raises for an unknown word. A prompt that names two values of one attribute ('red and blue',
'up and down') raises ValueError naming both.
"""

from __future__ import annotations

import re

from sora_jax.data import shapes


def _table(groups: dict[str, str]) -> dict[str, str]:
    """{word: grammar word} from {grammar word: 'synonym synonym ...'}."""
    return {w: target for target, words in groups.items() for w in words.split()}


def _verb_forms(stem: str) -> tuple[str, ...]:
    """Regular English forms of a verb: drift -> drift, drifts, drifting, drifted."""
    if stem.endswith("e"):
        return stem, stem + "s", stem[:-1] + "ing", stem + "d"
    if stem.endswith(("sh", "ch", "z", "x")):
        return stem, stem + "es", stem + "ing", stem + "ed"
    short = len(stem) <= 4 and re.fullmatch(r".*[^aeiou][aeiou][bdgmnprt]", stem)
    double = stem + stem[-1] if short else stem
    return stem, stem + "s", double + "ing", double + "ed"


def _verbs(groups: dict[str, str], irregular: dict[str, str]) -> dict[str, str]:
    """{form: value} for every form of each stem in `groups`, and the `irregular` forms."""
    out = {f: v for v, stems in groups.items() for s in stems.split() for f in _verb_forms(s)}
    out.update(_table(irregular))
    return out


# Words for the grammar's words (never a grammar word itself: a caption reads as written).
SYNONYMS = _table(
    {
        # colours
        "red": "crimson scarlet cherry ruby maroon vermilion reddish",
        "orange": "amber tangerine apricot coral copper orangey orangish",
        "yellow": "gold golden lemon mustard canary yellowish",
        "green": "lime emerald jade olive mint greenish",
        "cyan": "teal turquoise aqua aquamarine",
        "blue": "navy azure cobalt sapphire indigo cerulean bluish blueish",
        "magenta": "purple pink violet fuchsia lilac lavender mauve plum pinkish purplish",
        # shapes
        "circle": "ball dot disc disk sphere orb blob bubble spot marble coin circular round",
        "square": "box cube block tile rectangle squarish boxy",
        "triangle": "triangular pyramid wedge",
        # sizes
        "large": "big huge giant enormous massive bigger biggish",
        "small": "tiny little mini miniature wee teeny smaller smallish",
        "medium": "mid midsize midsized average",
        # speeds
        "quickly": "fast quick rapidly rapid swiftly swift speedily speedy briskly hastily "
        "hurriedly",
        "slowly": "slow gently gentle lazily leisurely sluggishly gradually unhurriedly calmly",
        "steadily": "steady evenly constantly smoothly moderately regularly",
        # backgrounds and textures
        "grey": "gray greyish grayish",
        "checkered": "checked chequered checkerboard chessboard checks",
        "striped": "stripes stripy stripey stripe",
        "noisy": "noise grainy speckled",
    }
)

# Direction parts: word -> ((axis, sign), ...) with axis 0 vertical (-1 up) and 1 horizontal.
_UP, _DOWN, _LEFT, _RIGHT = (0, -1), (0, 1), (1, -1), (1, 1)
_PARTS = {
    **{
        w: (_UP,) for w in "up upward upwards top upper above north skyward skywards uphill".split()
    },
    **{w: (_DOWN,) for w in "down downward downwards bottom lower below south downhill".split()},
    **{w: (_LEFT,) for w in "left leftward leftwards west westward westwards".split()},
    **{w: (_RIGHT,) for w in "right rightward rightwards east eastward eastwards".split()},
    "northwest": (_UP, _LEFT),
    "northeast": (_UP, _RIGHT),
    "southwest": (_DOWN, _LEFT),
    "southeast": (_DOWN, _RIGHT),
}
# Verbs that say which way: they add their part like a direction word.
_WAY_VERBS = _verbs(
    {"up": "rise climb ascend soar lift", "down": "fall drop sink descend dive plunge plummet"},
    {"up": "risen", "down": "fell sank sunk"},
)
_PARTS.update({form: (_UP if way == "up" else _DOWN,) for form, way in _WAY_VERBS.items()})
# Verbs that say how fast (used when no speed word is written).
_SPEED_VERBS = _verbs(
    {
        "quickly": "zoom race dart dash rush shoot zip whizz whiz hurtle bolt streak",
        "slowly": "drift crawl creep inch float amble meander wander stroll",
    },
    {"quickly": "shot flies flew flying speeds speeding sped", "slowly": "crept"},
)
# Words that start a clause naming where the shape comes from; the place words after them
# (and these fillers between) count as its start.
_FROM = ("from", "away")
_PLACE_FILLERS = frozenset("the a an of side sides corner edge frame screen image far very".split())

_CATEGORIES = {
    "shape": shapes.SHAPES,
    "colour": tuple(shapes.COLOURS),
    "size": tuple(shapes.SIZES),
    "speed": tuple(shapes.SPEEDS),
    "background": tuple(shapes.BACKGROUNDS),
    "texture": tuple(t for t in shapes.TEXTURES if t != "plain"),
}
_WORD_CATEGORY = {w: cat for cat, words in _CATEGORIES.items() for w in words}
_DIRECTION_NAMES = {
    (-1, 0): "up",
    (1, 0): "down",
    (0, -1): "left",
    (0, 1): "right",
    (-1, -1): "up-left",
    (-1, 1): "up-right",
    (1, -1): "down-left",
    (1, 1): "down-right",
}
assert set(_DIRECTION_NAMES.values()) == set(shapes.DIRECTIONS)
_AXIS_WORDS = ({-1: "up", 1: "down"}, {-1: "left", 1: "right"})

# Words a prompt commonly holds that name no attribute (not reported as unknown).
FUNCTION_WORDS = frozenset(
    "a an the and or then is are it its that which this there here with while as at by "
    "in into on onto to toward towards across along over through around of from away "
    "corner side sides edge frame screen image scene background backdrop very really bit "
    "slightly somewhat pace speed moving move moves moved goes go going went come comes coming "
    "came enter enters travel travels "
    "travelling traveling head heads heading slide slides sliding glide glides gliding roll "
    "rolls rolling bounce bounces bouncing shift shifts shifting diagonally diagonal "
    "straight light dark bright pale deep colored coloured sized shaped one single".split()
)


def _word(word: str) -> str:
    """The grammar word a prompt word stands for (itself when none)."""
    if word in SYNONYMS:
        return SYNONYMS[word]
    for cut in ("es", "s"):  # plurals of shape nouns
        stem = word[: -len(cut)]
        if word.endswith(cut) and _WORD_CATEGORY.get(SYNONYMS.get(stem, stem)) == "shape":
            return SYNONYMS.get(stem, stem)
    return word


def _direction(prompt: str, towards: list[set], start: list[set]) -> str | None:
    """The grammar direction of the parts read (per axis the destination, else away from the
    start); ValueError when one axis gets both signs."""
    move = []
    for axis in (0, 1):
        for parts in (towards[axis], start[axis]):
            if len(parts) > 1:
                a, b = (_AXIS_WORDS[axis][s] for s in sorted(parts))
                raise ValueError(f"prompt {prompt!r} names two directions: {a!r} and {b!r}")
        if towards[axis]:
            move.append(next(iter(towards[axis])))
        else:
            move.append(-next(iter(start[axis])) if start[axis] else 0)
    return _DIRECTION_NAMES.get(tuple(move))


def read_attributes(prompt: str) -> tuple[dict, tuple[str, ...]]:
    """(attributes the prompt names, in grammar words; the words that set none of them, in
    order). ValueError when it names two values of one attribute (e.g. two colours)."""
    found, ignored, speed_hint = {}, [], None
    towards, start = [set(), set()], [set(), set()]
    in_from = False
    for raw in re.findall(r"[a-z]+", prompt.lower()):
        word = _word(raw)
        if word in _FROM:
            in_from = True
            ignored.append(raw)
            continue
        if word in _PARTS:
            for axis, sign in _PARTS[word]:
                (start if in_from else towards)[axis].add(sign)
            continue
        in_from = in_from and word in _PLACE_FILLERS
        if word in _SPEED_VERBS:
            speed_hint = speed_hint or _SPEED_VERBS[word]
            continue
        category = _WORD_CATEGORY.get(word)
        if category is None:
            ignored.append(raw)
        elif found.setdefault(category, word) != word:
            raise ValueError(
                f"prompt {prompt!r} names two {category}s: {found[category]!r} and {word!r}"
            )
    direction = _direction(prompt, towards, start)
    if direction is not None:
        found["direction"] = direction
    if speed_hint is not None:
        found.setdefault("speed", speed_hint)
    return found, tuple(ignored)


def unknown_words(ignored: tuple[str, ...]) -> tuple[str, ...]:
    """The words of `ignored` that are not common function or motion words: what a user may
    have meant as an attribute the grammar does not have (e.g. 'star', 'zeppelin')."""
    return tuple(dict.fromkeys(w for w in ignored if w not in FUNCTION_WORDS))
