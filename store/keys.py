"""The one Redis key scheme of recstream. Every key starts with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


def as_text(value: bytes | str) -> str:
    """A key, field or value as Redis returned it (bytes, or str from a decoding client), as text."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Keys:
    prefix: str = "recstream"

    @property
    def current_version(self) -> str:
        """String: the version number the service serves and the worker continues from."""
        return f"{self.prefix}:model:current"

    @property
    def versions(self) -> str:
        """Sorted set of retained version numbers (score = version)."""
        return f"{self.prefix}:model:versions"

    def version(self, version: int) -> str:
        """Hash with fields ``blob`` (snapshot bytes), ``tag`` (HMAC) and ``meta`` (JSON); a delta version
        also ``base`` (the whole version its blob applies to: learner.cooccurrence_delta)."""
        return f"{self.prefix}:model:v:{version}"

    @property
    def version_bases(self) -> str:
        """Hash: delta version number -> its base version (retention keeps a retained delta's base)."""
        return f"{self.prefix}:model:version_bases"

    @property
    def version_times(self) -> str:
        """Hash: version number -> when it was written (seconds since the epoch), for spaced retention."""
        return f"{self.prefix}:model:version_times"

    @property
    def pinned(self) -> str:
        """Set of version numbers an operator pinned: never deleted by retention."""
        return f"{self.prefix}:model:pinned"

    @property
    def promotions(self) -> str:
        """List of JSON records of every promotion and rollback (newest last)."""
        return f"{self.prefix}:model:promotions"

    def challenger(self, name: str) -> str:
        """Hash with fields ``blob`` and ``tag``: the shadow model ``name`` as of the last checkpoint."""
        return f"{self.prefix}:challenger:{name}"

    @property
    def contest(self) -> str:
        """String (JSON): the champion's name, the promotion rule and each challenger's standing."""
        return f"{self.prefix}:challenger:contest"

    @property
    def challengers_saved(self) -> str:
        """Set of the names whose state a checkpoint saved in :meth:`challenger` (a checkpoint that erases users
        deletes the states of those no longer configured: they hold the users too)."""
        return f"{self.prefix}:challengers:saved"

    @property
    def challenger_request(self) -> str:
        """String (JSON ``{"name", "reason"}``) set by an operator: promote this challenger at the next checkpoint."""
        return f"{self.prefix}:challenger:promote"

    @property
    def offsets(self) -> str:
        """Hash ``topic/partition`` -> next offset to learn, written with every checkpoint."""
        return f"{self.prefix}:offsets"

    def seen(self, user_id: str) -> str:
        """Set of item ids the user has interacted with (never recommended to them again)."""
        return f"{self.prefix}:seen:{user_id}"

    @property
    def seen_log(self) -> str:
        """Stream of the seen-set additions, one entry per checkpoint (field ``lines``: ``user item item ...`` per
        line), capped at about ``store.model_store.SEEN_LOG_ENTRIES``: API processes keep the seen sets they serve
        current from it (api/seen_cache.py)."""
        return f"{self.prefix}:seen-log"

    def dedupe(self, bucket: int) -> str:
        """Set of event ids learned during one time bucket (expires after the retention window)."""
        return f"{self.dedupe_prefix}{bucket}"

    @property
    def hidden_items(self) -> str:
        """Hash item id -> JSON ``{"at", "reason", "actor"}``: items an operator hid (taken down): never recommended,
        whatever the model says, until unhidden (store/hidden_items.py)."""
        return f"{self.prefix}:items:hidden"

    @property
    def hidden_items_changes(self) -> str:
        """Integer: incremented with every change of :attr:`hidden_items`, so API processes re-read the hash only
        when it changed (api/hidden_items.py)."""
        return f"{self.prefix}:items:hidden:changes"

    @property
    def hiding_history(self) -> str:
        """List of JSON records of the last hides and unhides (newest last), capped (store/hidden_items.py)."""
        return f"{self.prefix}:items:hidden:history"

    @property
    def erase_requests(self) -> str:
        """Hash user id -> JSON ``{"at", "reason", "actor"}``: users to erase, until the worker's checkpoint that
        erases them deletes the request (store/erasures.py)."""
        return f"{self.prefix}:users:erase:requests"

    @property
    def erased_users(self) -> str:
        """Hash fingerprint of a user id (learner.erasure) -> JSON ``{"at", "applied", "version"}``: users erased,
        so that their events stamped before the request are never learned again (kept RECSTREAM_ERASURE_KEPT_DAYS)."""
        return f"{self.prefix}:users:erased"

    @property
    def erase_floor(self) -> str:
        """Integer: the latest version written by a checkpoint that erased users; no version below it may be
        promoted (it may hold an erased user)."""
        return f"{self.prefix}:users:erase:floor"

    @property
    def dedupe_prefix(self) -> str:
        return f"{self.prefix}:dedupe:"

    @property
    def gate_counts(self) -> str:
        """Hash reason code -> events held or dropped for that reason (all time)."""
        return f"{self.prefix}:gate:counts"

    @property
    def guard_status(self) -> str:
        """Hash describing the model guard: ``state`` (learning|paused), ``since``, ``reference(_count)``."""
        return f"{self.prefix}:guard:status"

    @property
    def guard_resume(self) -> str:
        """String set by an operator to ask a paused worker to resume learning."""
        return f"{self.prefix}:guard:resume"

    @property
    def quarantine_replayed(self) -> str:
        """Set of the quarantine records already replayed (``topic:partition:offset``): a replay
        leaves them out unless asked again (stream/quarantine.py)."""
        return f"{self.prefix}:quarantine:replayed"

    @property
    def writer_lease(self) -> str:
        """String (expiring): the id of the worker that writes the model (store/writer_lease.py)."""
        return f"{self.prefix}:worker:lease"

    @property
    def writer_epoch(self) -> str:
        """Integer: incremented at each take-over of the writer lease; checkpoints check it is their holder's."""
        return f"{self.prefix}:worker:lease:epoch"

    @property
    def announce_channel(self) -> str:
        """Pub/sub channel on which a new version number is published after each checkpoint."""
        return f"{self.prefix}:model:announce"

    def rate_limit(self, key_name: str, scope: str) -> str:
        """Hash ``tokens``/``at``: one API key's token bucket for one scope (expires when full again)."""
        return f"{self.prefix}:ratelimit:{key_name}:{scope}"
