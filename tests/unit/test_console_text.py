"""``vpsd.console_text``: a hostile guest's console shown safely (issue 22, items 8 and 16).

What a terminal would act on, other than colours, must never come out: the clipboard (OSC
52), titles (OSC 0/2), screen clears and cursor moves (CSI), key redefinitions (DCS), resets
(ESC c), C1 controls, and sequences cut off by the console's tail. Colours come out as SGR
for a terminal and as classes (no inline style) for the panel.
"""

from __future__ import annotations

import re

import pytest

from vpsd.console_text import PLAIN, Style, for_terminal, plain, runs, to_html

ESC = "\x1b"
# What a safe output may still hold: SGR sequences vpsd wrote itself, and no other control.
ONLY_SGR = re.compile(r"\x1b\[[0-9;]*m")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

HOSTILE = {
    "osc52-clipboard-bel": f"{ESC}]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",
    "osc52-clipboard-st": f"{ESC}]52;c;Y3VybCBldmlsLnNoIHwgc2g={ESC}\\",
    "osc0-title": f"{ESC}]0;you have been pwned\x07",
    "osc2-title-c1-st": f"{ESC}]2;title\x9c",
    "osc8-hyperlink": f"{ESC}]8;;https://evil.example/\x07",
    "csi-2j-clear": f"{ESC}[2J{ESC}[H",
    "csi-cursor-up-erase": f"{ESC}[3A{ESC}[2K",
    "csi-private-mode": f"{ESC}[?1049h{ESC}[?25l",
    "csi-report-request": f"{ESC}[6n{ESC}[21t",
    "dcs-key-redefinition": f"{ESC}P0;1|17/ls -la{ESC}\\",
    "dcs-c1": "\x90q#0;2;0;0;0\x9c",
    "apc": f"{ESC}_Gf=100;AAAA{ESC}\\",
    "pm-and-sos": f"{ESC}^private{ESC}\\{ESC}Xstring{ESC}\\",
    "c1-csi-clear": "\x9b2J",
    "c1-osc-title": "\x9d0;title\x07",
    "ris-reset": f"{ESC}c",
    "decaln-fill": f"{ESC}#8",
    "charset-switch": f"{ESC}(0{ESC})0\x0e\x0f",
    "keypad-and-cursor-save": f"{ESC}={ESC}7{ESC}8",
    "bell-backspace-del": "\x07\x08\x08\x7f",
    "bidi-controls": "\u202e\u2066\u200f\u061c\u202c",
    "nul-and-vt": "\x00\x0b\x0c",
}
TRUNCATED = {
    "lone-esc": ESC,
    "csi-no-final": f"{ESC}[2",
    "csi-params-only": f"{ESC}[38;5;",
    "osc-no-terminator": f"{ESC}]52;c;Y3VybA==",
    "dcs-no-terminator": f"{ESC}P0;1|17/",
    "esc-intermediate": f"{ESC}(",
    "c1-csi": "\x9b",
}


@pytest.mark.parametrize("sequence", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_sequences_are_dropped_whole(sequence: str) -> None:
    text = f"before{sequence}after\n"
    for shown in (plain(text), for_terminal(text)):
        assert shown == "beforeafter\n", repr(shown)
    assert to_html(text) == "beforeafter\n"


@pytest.mark.parametrize("sequence", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_sequences_cut_off_at_the_end_are_dropped(sequence: str) -> None:
    text = f"login: {sequence}"
    assert plain(text) == "login: "
    assert for_terminal(text) == "login: "


def test_an_unterminated_string_sequence_ends_at_the_next_escape() -> None:
    # An OSC cut by a CSI: both dropped, the text after them kept.
    assert plain(f"a{ESC}]0;title{ESC}[2Jb") == "ab"
    # CAN aborts a DCS.
    assert plain(f"a{ESC}P1$r\x18b") == "ab"


def test_colours_pass_as_sgr_and_end_reset() -> None:
    # systemd's status column, as it writes it to the serial console.
    text = f"[{ESC}[0;32m  OK  {ESC}[0m] Started ssh.service\r\n[{ESC}[0;1;31mFAILED{ESC}[0m]"
    assert plain(text) == "[  OK  ] Started ssh.service\n[FAILED]"
    assert for_terminal(text) == (
        f"[{ESC}[0;32m  OK  {ESC}[0m] Started ssh.service\n[{ESC}[0;1;31mFAILED{ESC}[0m]"
    )
    # A colour left on at the end is reset, so the user's prompt is not painted.
    assert for_terminal(f"{ESC}[1;33mwarning").endswith(f"warning{ESC}[0m")


def test_for_terminal_writes_nothing_but_sgr() -> None:
    everything = "".join(HOSTILE.values()) + f"{ESC}[5;7;8;9mhidden{ESC}[38;2;1;2;3mrgb"
    shown = for_terminal(f"{ESC}[31mred " + everything)
    assert not CONTROL.search(ONLY_SGR.sub("", shown)), repr(shown)
    # Blink, reverse, conceal and strike are not colours: they change nothing, and the text
    # shows unhidden; an RGB colour is shown in the default one.
    assert ONLY_SGR.findall(shown) == [f"{ESC}[0;31m", f"{ESC}[0m"]
    assert plain(shown) == "red hiddenrgb"


@pytest.mark.parametrize(
    ("params", "style"),
    [
        ("", PLAIN),
        ("0", PLAIN),
        ("1", Style(bold=True)),
        ("1;2;3;4", Style(bold=True, dim=True, italic=True, underline=True)),
        ("31", Style(foreground=1)),
        ("91;104", Style(foreground=9, background=12)),
        ("38;5;208", Style(foreground=208)),
        ("38:5:208", Style(foreground=208)),
        ("48;5;300", Style(background=None)),  # no such palette colour
        ("38;2;10;20;30;1", Style(bold=True)),  # RGB not kept; the fields after it still are
        ("31;39", PLAIN),
        ("1;22", PLAIN),
        ("4;24;3;23", PLAIN),
        ("5;7;8", PLAIN),
        ("4:3", Style(underline=True)),  # curly underline: an underline
    ],
)
def test_sgr_parameters(params: str, style: Style) -> None:
    assert [found for found, _ in runs(f"{ESC}[{params}mx")] == [style]


def test_private_or_oversized_sgr_is_dropped_without_effect() -> None:
    for params in ("?31", ">1", "1" * 65, "9" * 5000):
        assert list(runs(f"{ESC}[{params}mx")) == [(PLAIN, "x")]


def test_carriage_returns_never_overwrite_a_line() -> None:
    assert plain("shown\rhidden\r\nnext\r\r\nlast") == "shown\nhidden\nnext\nlast"


def test_html_escapes_and_uses_classes_only() -> None:
    text = f"<b>&'\"{ESC}[1;32;44mok{ESC}[38;5;200m!{ESC}[0m done"
    assert to_html(text) == (
        "&lt;b&gt;&amp;&#x27;&quot;"
        '<span class="con-bold con-fg-2 con-bg-4">ok</span>'
        '<span class="con-bold con-bg-4">!</span>'
        " done"
    )
    assert "style=" not in to_html(text)


def test_tab_and_text_pass_unchanged() -> None:
    text = "Debian GNU/Linux 12 web-1 ttyS0\n\nweb-1 login:\tü ✓ 😀 \ufffd"
    assert plain(text) == for_terminal(text) == text


def test_a_long_flood_is_read_in_one_pass() -> None:
    # A megabyte of unterminated OSC, then a million bytes of escapes: each byte is read once.
    flood = f"{ESC}]52;c;" + "A" * 1_000_000 + "\n" + f"{ESC}[2J" * 200_000 + "end"
    assert plain(flood) == "end"
