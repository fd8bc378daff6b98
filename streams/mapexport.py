"""Journey maps as files: self-contained HTML (fonts embedded), SVG, or PNG (rendered by resvg
with the same embedded fonts, so a map looks the same on any machine, offline)."""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

from pipeline.journeymap import JourneyMap, compare, render_html, render_svg

FONT_FILES = {"normal": "DejaVuSans-subset.ttf", "bold": "DejaVuSans-Bold-subset.ttf"}
FORMATS = (".html", ".svg", ".png")


def font_path(name: str) -> Path:
    """A font shipped in streams/static/fonts (exports embed them, the map page serves them)."""
    return Path(str(resources.files("streams").joinpath(f"static/fonts/{name}")))


def embedded_fonts() -> dict[str, str]:
    """Weight → base64 TrueType, for @font-face in exported HTML."""
    return {
        weight: base64.b64encode(font_path(name).read_bytes()).decode()
        for weight, name in FONT_FILES.items()
    }


def map_bytes(journey_map: JourneyMap, before: JourneyMap | None, suffix: str) -> bytes:
    """The map in the format named by ``suffix`` (.html, .svg or .png)."""
    if suffix == ".html":
        return render_html(journey_map, before, embedded_fonts()).encode()
    changes = compare(before, journey_map) if before is not None else None
    svg = render_svg(journey_map, changes)
    if suffix == ".svg":
        return svg.encode()
    if suffix == ".png":
        import resvg_py

        png = resvg_py.svg_to_bytes(
            svg_string=svg,
            skip_system_fonts=True,
            font_files=[str(font_path(name)) for name in FONT_FILES.values()],
            zoom=2.0,
            background="#ffffff",
        )
        return bytes(png)
    raise ValueError(f"cannot write {suffix!r}: the file must end in {', '.join(FORMATS)}")
