"""General MIDI program names and families (the 16 GM instrument families of 8 programs)."""
from __future__ import annotations

PROGRAM_NAMES = (
    # piano
    "acoustic grand piano", "bright acoustic piano", "electric grand piano", "honky-tonk piano",
    "electric piano 1", "electric piano 2", "harpsichord", "clavinet",
    # chromatic percussion
    "celesta", "glockenspiel", "music box", "vibraphone", "marimba", "xylophone", "tubular bells", "dulcimer",
    # organ
    "drawbar organ", "percussive organ", "rock organ", "church organ", "reed organ", "accordion", "harmonica",
    "tango accordion",
    # guitar
    "nylon guitar", "steel guitar", "jazz guitar", "clean electric guitar", "muted electric guitar",
    "overdriven guitar", "distortion guitar", "guitar harmonics",
    # bass
    "acoustic bass", "fingered electric bass", "picked electric bass", "fretless bass", "slap bass 1",
    "slap bass 2", "synth bass 1", "synth bass 2",
    # strings
    "violin", "viola", "cello", "contrabass", "tremolo strings", "pizzicato strings", "orchestral harp", "timpani",
    # ensemble
    "string ensemble 1", "string ensemble 2", "synth strings 1", "synth strings 2", "choir aahs", "voice oohs",
    "synth voice", "orchestra hit",
    # brass
    "trumpet", "trombone", "tuba", "muted trumpet", "french horn", "brass section", "synth brass 1", "synth brass 2",
    # reed
    "soprano sax", "alto sax", "tenor sax", "baritone sax", "oboe", "english horn", "bassoon", "clarinet",
    # pipe
    "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "whistle", "ocarina",
    # synth lead
    "square lead", "sawtooth lead", "calliope lead", "chiff lead", "charang lead", "voice lead", "fifths lead",
    "bass and lead",
    # synth pad
    "new age pad", "warm pad", "polysynth pad", "choir pad", "bowed pad", "metallic pad", "halo pad", "sweep pad",
    # synth effects
    "rain effect", "soundtrack effect", "crystal effect", "atmosphere effect", "brightness effect", "goblins effect",
    "echoes effect", "sci-fi effect",
    # ethnic
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    # percussive
    "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum", "melodic tom", "synth drum", "reverse cymbal",
    # sound effects
    "guitar fret noise", "breath noise", "seashore", "bird tweet", "telephone ring", "helicopter", "applause",
    "gunshot",
)
assert len(PROGRAM_NAMES) == 128

FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed", "pipe",
    "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects",
)
DRUMS = "drums"
DRUM_CHANNEL = 9  # MIDI channel 10, 0-based

# GS drum kits by program number on the drum channel; any other program is the standard kit.
DRUM_KITS = {0: "drum kit", 8: "room drum kit", 16: "power drum kit", 24: "electronic drum kit",
             25: "808 drum kit", 32: "jazz drum kit", 40: "brush drum kit", 48: "orchestral drum kit"}


def program_name(program: int) -> str:
    return PROGRAM_NAMES[int(program) & 127]


def family(program: int) -> str:
    return FAMILIES[(int(program) & 127) // 8]


def stem_id(category: str) -> str:
    """File-safe stem id of a category ("synth lead" -> "synth_lead")."""
    return category.replace(" ", "_").replace("-", "_")


def drum_label(program: int) -> str:
    return DRUM_KITS.get(int(program), "drum kit")
