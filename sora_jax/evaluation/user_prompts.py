"""Prompts as people type them, with the moving-shapes attributes each one asks for.

The training captions follow one grammar ('a small red circle moves up-left slowly on a grey
background'); users write 'red ball going up and to the right'. These prompts were written
apart from the captions and from the expander's word lists (sora_jax.inference.prompt_reading),
to measure how a model and its default sampling path follow such prompts: each names a colour
and a direction in everyday words, some a shape, size, speed or background, never in the
grammar's order. `named` holds what a prompt asks for, in grammar words; a scorer checks only
those.
"""

from __future__ import annotations

USER_PROMPTS: tuple[tuple[str, dict], ...] = (
    ("red ball going up", dict(colour="red", shape="circle", direction="up")),
    ("a blue square sliding left", dict(colour="blue", shape="square", direction="left")),
    ("green triangle heading down and right", dict(colour="green", shape="triangle", direction="down-right")),
    ("yellow dot moving toward the bottom left corner", dict(colour="yellow", shape="circle", direction="down-left")),
    ("purple box floating upwards", dict(colour="magenta", shape="square", direction="up")),
    ("an orange circle that moves to the right", dict(colour="orange", shape="circle", direction="right")),
    ("Cyan triangle, going down.", dict(colour="cyan", shape="triangle", direction="down")),
    ("a big red square moving up and to the left", dict(colour="red", shape="square", size="large", direction="up-left")),
    ("tiny blue ball rolling to the left", dict(colour="blue", shape="circle", size="small", direction="left")),
    ("pink triangle drifting towards the top right", dict(colour="magenta", shape="triangle", direction="up-right")),
    ("something green moving right fast", dict(colour="green", direction="right", speed="quickly")),
    ("a yellow shape slowly sinking", dict(colour="yellow", direction="down", speed="slowly")),
    ("teal ball rising", dict(colour="cyan", shape="circle", direction="up")),
    ("navy blue cube going from right to left", dict(colour="blue", shape="square", direction="left")),
    ("a red triangle moves from the top to the bottom", dict(colour="red", shape="triangle", direction="down")),
    ("orange square heading to the lower right", dict(colour="orange", shape="square", direction="down-right")),
    ("gold circle moving diagonally up and left", dict(colour="yellow", shape="circle", direction="up-left")),
    ("a violet dot falling", dict(colour="magenta", shape="circle", direction="down")),
    ("lime green box moving to the top", dict(colour="green", shape="square", direction="up")),
    ("scarlet ball moving down to the left", dict(colour="red", shape="circle", direction="down-left")),
    ("blue triangle on white, moving right", dict(colour="blue", shape="triangle", direction="right", background="white")),
    ("a turquoise square drifting down", dict(colour="cyan", shape="square", direction="down")),
    ("small orange ball going up to the right", dict(colour="orange", shape="circle", size="small", direction="up-right")),
    ("magenta shape moving left slowly", dict(colour="magenta", direction="left", speed="slowly")),
    ("a green circle travelling towards the upper left", dict(colour="green", shape="circle", direction="up-left")),
    ("yellow block sliding down and to the right", dict(colour="yellow", shape="square", direction="down-right")),
    ("red dot zipping left", dict(colour="red", shape="circle", direction="left", speed="quickly")),
    ("cyan box going down-left", dict(colour="cyan", shape="square", direction="down-left")),
    ("a large purple ball moving up", dict(colour="magenta", shape="circle", size="large", direction="up")),
    ("blue square heading towards the top left corner", dict(colour="blue", shape="square", direction="up-left")),
    ("an emerald triangle falling to the right", dict(colour="green", shape="triangle", direction="down-right")),
    ("amber ball moving right across a black background", dict(colour="orange", shape="circle", direction="right", background="black")),
    ("a pink square climbing", dict(colour="magenta", shape="square", direction="up")),
    ("yellow triangle goes left", dict(colour="yellow", shape="triangle", direction="left")),
    ("a red box that drops down", dict(colour="red", shape="square", direction="down")),
    ("green ball moving from left to right", dict(colour="green", shape="circle", direction="right")),
    ("cyan circle heading upward and right", dict(colour="cyan", shape="circle", direction="up-right")),
    ("a blue dot on a grey background going down", dict(colour="blue", shape="circle", direction="down", background="grey")),
    ("orange triangle moving to the left quickly", dict(colour="orange", shape="triangle", direction="left", speed="quickly")),
    ("crimson square moving towards the bottom right", dict(colour="red", shape="square", direction="down-right")),
    ("a little green square going up and left", dict(colour="green", shape="square", size="small", direction="up-left")),
    ("purple triangle moving down", dict(colour="magenta", shape="triangle", direction="down")),
    ("a yellow ball moving up towards the right", dict(colour="yellow", shape="circle", direction="up-right")),
    ("blue box moving from the bottom to the top", dict(colour="blue", shape="square", direction="up")),
    ("aqua triangle sliding to the right", dict(colour="cyan", shape="triangle", direction="right")),
    ("a red ball slowly moving down and to the left", dict(colour="red", shape="circle", direction="down-left", speed="slowly")),
    ("orange dot going up", dict(colour="orange", shape="circle", direction="up")),
    ("a huge blue triangle moving left", dict(colour="blue", shape="triangle", size="large", direction="left")),
)  # fmt: skip
