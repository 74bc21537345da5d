"""Seeded random short melodies in LilyPond, one staff of two to four bars.

Each melody picks a clef, a key and a time signature, then fills every bar exactly, beat by beat,
from rhythm patterns (whole to sixteenth notes, dotted notes, rests, beamed eighths and
sixteenths), with accidentals now and then. The renderer supplies the page layout (small staff,
no titles), so the markup is just the music expression.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

STEPS = "cdefgab"
# clef -> lowest and highest pitch as (step index, octave), octave 4 = middle-C octave
CLEF_RANGES = {
    "treble": ((2, 4), (0, 6)),  # e' .. c'''
    "bass": ((4, 2), (2, 4)),  # g, .. e'
    "alto": ((3, 3), (1, 5)),  # f .. d''
}
KEYS = [
    "c \\major", "g \\major", "d \\major", "a \\major", "f \\major", "bes \\major", "ees \\major",
    "a \\minor", "e \\minor", "d \\minor", "g \\minor", "b \\minor",
]  # fmt: skip
# time signature -> (beat length in sixteenths, beats per bar)
TIMES = {"2/4": (4, 2), "3/4": (4, 3), "4/4": (4, 4), "3/8": (6, 1), "6/8": (6, 2)}
# rhythm patterns filling one beat: durations in LilyPond syntax and sixteenths; "r" = rest
QUARTER_BEAT = [
    [("4", 4)], [("4", 4)], [("8", 2), ("8", 2)], [("8", 2), ("8", 2)], [("8.", 3), ("16", 1)],
    [("16", 1), ("16", 1), ("8", 2)], [("16", 1)] * 4, [("r4", 4)], [("8", 2), ("r8", 2)],
    [("r8", 2), ("8", 2)],
]  # fmt: skip
DOTTED_BEAT = [
    [("4.", 6)], [("4", 4), ("8", 2)], [("8", 2)] * 3, [("8", 2), ("4", 4)], [("r4.", 6)],
    [("8.", 3), ("16", 1), ("8", 2)], [("4", 4), ("r8", 2)],
]  # fmt: skip
LONG_NOTES = {8: "2", 12: "2.", 16: "1"}  # sixteenths -> duration of a note spanning beats


def _pitch_name(step: int, octave: int, accidental: str) -> str:
    marks = "'" * (octave - 3) if octave >= 3 else "," * (3 - octave)
    return f"{STEPS[step]}{accidental}{marks}"


class _Melody:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pitch(self, clef: str) -> str:
        (low_step, low_oct), (high_step, high_oct) = CLEF_RANGES[clef]
        low, high = low_oct * 7 + low_step, high_oct * 7 + high_step
        value = self.rng.randint(low, high)
        r = self.rng.random()
        accidental = "is" if r < 0.08 else "es" if r < 0.16 else ""
        return _pitch_name(value % 7, value // 7, accidental)

    def beat(self, clef: str, beat_len: int) -> list[str]:
        pattern = self.rng.choice(QUARTER_BEAT if beat_len == 4 else DOTTED_BEAT)
        events = []
        for duration, _ in pattern:
            if duration.startswith("r"):
                events.append(duration)
            else:
                events.append(self.pitch(clef) + duration)
        notes = [i for i, (d, _) in enumerate(pattern) if not d.startswith("r")]
        beamable = [i for i in notes if pattern[i][1] < 4]
        # beam consecutive short notes of the beat explicitly, as engravers do
        if len(beamable) >= 2 and beamable == list(range(beamable[0], beamable[-1] + 1)):
            events[beamable[0]] += "["
            events[beamable[-1]] += "]"
        return events

    def bar(self, clef: str, time: str) -> str:
        beat_len, beats = TIMES[time]
        events: list[str] = []
        left = beats
        while left:
            span = self.rng.choice([n for n in (2, 3, 4) if n <= left] or [1])
            if beat_len == 4 and span > 1 and self.rng.random() < 0.2:
                events.append(self.pitch(clef) + LONG_NOTES[4 * span])
                left -= span
            else:
                events.extend(self.beat(clef, beat_len))
                left -= 1
        return " ".join(events)

    def melody(self) -> str:
        clef = self.rng.choice(["treble", "treble", "treble", "bass", "bass", "alto"])
        key = self.rng.choice(KEYS)
        time = self.rng.choice(list(TIMES))
        bars = self.rng.randint(2, 4 if time in ("2/4", "3/8") else 3)
        body = " | ".join(self.bar(clef, time) for _ in range(bars))
        return f'{{ \\clef {clef} \\key {key} \\time {time} {body} \\bar "|." }}'


def iter_markups(seed: int) -> Iterator[str]:
    """An endless, seeded stream of melodies (possibly with repeats; the caller de-duplicates)."""
    rng = random.Random(f"music-{seed}")
    maker = _Melody(rng)
    while True:
        yield maker.melody()
