"""Prints the README's configuration table from the settings class: ``python -m recstream.settings_table``."""

from __future__ import annotations

from recstream.settings import Settings


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, (list, dict)):
            shown = f"`{default!r}`".replace("'", '"')
        else:
            shown = f"`{default}`"
        rows.append(f"| `RECSTREAM_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
