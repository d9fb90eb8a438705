"""The provenance stamp shown on every executed page and stored in every metrics JSON."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any

PACKAGES = ("torch", "open_clip_torch", "timm", "transformers", "numpy", "pandas",
            "scikit-learn", "spacy", "negspacy", "torchxrayvision")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"absent"`` when not installed)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def make_stamp(profile: str, model_id: str, data_hash: str, **extra: Any) -> dict[str, Any]:
    """A dict naming the profile, the model, the data/split hash, the date and the versions."""
    return {
        "profile": profile,
        "model_id": model_id,
        "data_hash": data_hash,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "packages": package_versions(),
        **extra,
    }


def stamp_markdown(stamp: dict[str, Any]) -> str:
    """The stamp as a MyST admonition for the top of an executed page."""
    pk = ", ".join(f"{k} {v}" for k, v in stamp["packages"].items() if v != "absent")
    kind = "warning" if stamp["profile"] == "demo" else "note"
    note = (" Demo numbers come from synthetic images and a small proxy model: they are "
            "**not** BiomedCLIP results." if stamp["profile"] == "demo" else "")
    extra = "".join(f"\n- **{k}**: `{v}`" for k, v in stamp.items()
                    if k not in ("profile", "model_id", "data_hash", "date", "python", "packages"))
    return (f"**Executed with profile `{stamp['profile']}`**.{note}\n\n"
            f"- **model**: `{stamp['model_id']}`\n- **data/split hash**: `{stamp['data_hash']}`"
            f"{extra}\n- **executed**: {stamp['date']}, Python {stamp['python']}\n"
            f"- **packages**: {pk}\n"), kind


def show_stamp(stamp: dict[str, Any]) -> None:
    """Display the stamp in a notebook as a coloured box (HTML, so it renders in the book)."""
    from IPython.display import HTML, display

    md, kind = stamp_markdown(stamp)
    import html

    items = [line[2:] for line in md.splitlines() if line.startswith("- ")]
    head = md.split("\n\n")[0]

    def fmt(s: str) -> str:
        s = html.escape(s)
        import re

        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    lis = "".join(f"<li>{fmt(i)}</li>" for i in items)
    cls = "admonition warning" if kind == "warning" else "admonition note"
    display(HTML(f'<div class="{cls} stamp"><p class="admonition-title">Provenance</p>'
                 f"<p>{fmt(head)}</p><ul>{lis}</ul></div>"))
