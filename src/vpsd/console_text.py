"""A guest's serial console, made safe to show: colours kept, every other control dropped.

A server's console is written by its guest, which may be hostile. Printed raw to a terminal,
its escape sequences can write the user's clipboard (OSC 52), set the window title, clear
the screen, redefine keys (DCS) or hide text; in a web page they are noise. This module reads
the text as a terminal would (ECMA-48: CSI, OSC, DCS, SOS, PM, APC, other escapes, C0 and C1
controls, also when cut off at the end) and keeps only the printable text and the colours of
SGR sequences: bold, dim, italic, underline and the 256-colour palette. Everything else is
dropped whole, with the bidirectional-text controls that could make it read as other text.
Carriage returns become line breaks, so a line is never overwritten by a later one.

Three renderings: ``for_terminal`` (SGR rebuilt from what was understood, reset at the
end), ``plain`` (text only) and ``to_html`` (escaped, colours as ``<span class="...">``,
never inline styles: the panel's Content-Security-Policy forbids them). Each is one pass over
the text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

ESC = "\x1b"
# One regular expression, so the text is scanned once. Order matters: CSI and the string
# sequences before the other escapes, which would otherwise take their first two characters.
_CONTROL = re.compile(
    # CSI, 7-bit or C1: parameters, intermediates, the final byte (missing when cut off).
    r"(?:\x1b\[|\x9b)(?P<params>[\x30-\x3f]*)(?P<inter>[\x20-\x2f]*)(?P<final>[\x40-\x7e])?"
    # OSC, DCS, SOS, PM, APC: a string up to BEL or ST; CAN or SUB abort it; or the end.
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x18\x1a\x1b\x9c]*(?:\x07|\x1b\\|[\x18\x1a\x9c])?"
    # Any other escape: intermediates and a final byte (ESC c resets the terminal, ESC # 8
    # fills the screen), or a lone ESC.
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
    r"|(?P<cr>\r+\n?)"
    # Other C0 controls but tab and line feed, DEL, other C1 controls, bidirectional controls.
    r"|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_SGR_PARAMS = re.compile(r"[0-9;:]{0,64}")
"""SGR parameters vpsd reads; longer ones (or private ones, ``<>=?``) are dropped."""


@dataclass(frozen=True, slots=True)
class Style:
    """The SGR attributes vpsd keeps; colours are palette indexes (0-15 basic, up to 255)."""

    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    foreground: int | None = None
    background: int | None = None


PLAIN = Style()


def runs(text: str) -> Iterator[tuple[Style, str]]:
    """The printable pieces of ``text`` in order, each with the style in force; controls and
    sequences other than SGR are left out, carriage returns become ``\\n``."""
    style = PLAIN
    position = 0
    for match in _CONTROL.finditer(text):
        if match.start() > position:
            yield style, text[position : match.start()]
        position = match.end()
        if match["cr"] is not None:
            yield style, "\n"
        elif _is_sgr(match):
            style = _apply_sgr(style, match["params"])
    if position < len(text):
        yield style, text[position:]


def _is_sgr(match: re.Match[str]) -> bool:
    """Whether a CSI is an SGR vpsd reads (``m``, no intermediates, plain parameters)."""
    return (
        match["final"] == "m"
        and not match["inter"]
        and _SGR_PARAMS.fullmatch(match["params"]) is not None
    )


def plain(text: str) -> str:
    """The text alone: no colour, no control but tab and line feed."""
    return "".join(piece for _, piece in runs(text))


def for_terminal(text: str) -> str:
    """The text with its colours as SGR sequences vpsd writes itself, and nothing else a
    terminal would act on; ends in the default style."""
    out: list[str] = []
    shown = PLAIN
    for style, piece in runs(text):
        if style != shown:
            out.append(_sgr(style))
            shown = style
        out.append(piece)
    if shown != PLAIN:
        out.append(_sgr(PLAIN))
    return "".join(out)


def to_html(text: str) -> str:
    """The text escaped for HTML (inside ``<pre>``), each coloured piece in a ``<span>`` with
    classes ``con-bold``, ``con-dim``, ``con-italic``, ``con-underline``, ``con-fg-N`` and
    ``con-bg-N`` (N: 0-15; other palette colours are shown in the default colour)."""
    out: list[str] = []
    for style, piece in runs(text):
        escaped = html.escape(piece)
        classes = _classes(style)
        out.append(f'<span class="{classes}">{escaped}</span>' if classes else escaped)
    return "".join(out)


def _classes(style: Style) -> str:
    names = [
        f"con-{name}" for name in ("bold", "dim", "italic", "underline") if getattr(style, name)
    ]
    if style.foreground is not None and style.foreground < 16:
        names.append(f"con-fg-{style.foreground}")
    if style.background is not None and style.background < 16:
        names.append(f"con-bg-{style.background}")
    return " ".join(names)


def _sgr(style: Style) -> str:
    codes = ["0"]
    codes += [code for code, on in (("1", style.bold), ("2", style.dim), ("3", style.italic)) if on]
    if style.underline:
        codes.append("4")
    for base, colour in ((30, style.foreground), (40, style.background)):
        if colour is None:
            continue
        if colour < 8:
            codes.append(str(base + colour))
        elif colour < 16:
            codes.append(str(base + 60 + colour - 8))
        else:
            codes.append(f"{base + 8};5;{colour}")
    return f"{ESC}[{';'.join(codes)}m"


def _number(text: str) -> int:
    return int(text) if text else 0


def _apply_sgr(style: Style, params: str) -> Style:
    """``style`` after the SGR parameters ``params`` (``1;31``, ``38;5;208``, ``38:5:208``)."""
    fields = params.split(";")
    index = 0
    while index < len(fields):
        code, *rest = fields[index].split(":")  # ITU T.416: one field may hold a colour
        index += 1
        if not rest and _number(code) in (38, 48, 58):
            # 38;5;N or 38;2;R;G;B: the next fields belong to this one.
            taken = 2 if fields[index : index + 1] == ["5"] else 4
            rest = fields[index : index + taken]
            index += taken
        style = _apply_code(style, _number(code), rest)
    return style


def _apply_code(style: Style, code: int, rest: list[str]) -> Style:
    """``style`` after one SGR code; blink, reverse, conceal, fonts and the underline's colour
    are not kept (they are not colours, and conceal would hide text)."""
    if code == 0:
        return PLAIN
    if code == 1:
        return replace(style, bold=True)
    if code == 2:
        return replace(style, dim=True)
    if code == 22:
        return replace(style, bold=False, dim=False)
    if code in (3, 23):
        return replace(style, italic=code == 3)
    if code in (4, 24):
        return replace(style, underline=code == 4)
    if code in (38, 39) or 30 <= code <= 37 or 90 <= code <= 97:
        return replace(style, foreground=_colour(code - 30, rest))
    if code in (48, 49) or 40 <= code <= 47 or 100 <= code <= 107:
        return replace(style, background=_colour(code - 40, rest))
    return style


def _colour(offset: int, rest: list[str]) -> int | None:
    """The palette index an SGR colour code names, counted from its 30 (or 40): 0-7 basic,
    60-67 bright, 8 extended (``5;N``; None for an RGB colour, not kept), 9 the default."""
    if offset < 8:
        return offset
    if offset >= 60:
        return offset - 60 + 8
    if offset == 8 and len(rest) >= 2 and rest[0] == "5" and rest[1].isdigit():
        index = int(rest[1])
        return index if index <= 255 else None
    return None
