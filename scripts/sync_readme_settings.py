"""Rewrite the settings table in README.md from the settings class (``python scripts/sync_readme_settings.py``)."""

from __future__ import annotations

import re
from pathlib import Path

from recstream.settings_table import markdown_table

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
new = re.sub(re.escape(start) + r".*?" + re.escape(end), f"{start}\n{markdown_table()}\n{end}", text, flags=re.DOTALL)
readme.write_text(new)
print("README.md settings table:", "updated" if new != text else "already in sync")
