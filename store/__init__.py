"""Redis: model snapshots and their offsets, seen sets, announcements. The only package that knows key names."""
