"""The one settings object: every option comes from a ``RECSTREAM_*`` environment variable.

The README's configuration table is checked against this class by a test, so a new field
must be documented there too.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.gate.gate import GateConfig
from learner.registry import DEFAULT_MODEL, MODELS, build_model

#: The snapshot key that recstream's source once gave as a default (public, so it signs nothing): refused.
PUBLIC_HMAC_KEY = "recstream-dev-key-change-me"

#: What a worker, an API process or a command that signs or verifies snapshots says without RECSTREAM_HMAC_KEY.
MISSING_HMAC_KEY = (
    "RECSTREAM_HMAC_KEY is not set: it signs the model snapshots, which are checked with it before they are "
    "loaded. Set it to a long random secret, the same for the worker, every API process and the CLI (e.g. "
    "`openssl rand -hex 32`); `recstream up` makes its own in .recstream/hmac.key"
)

#: What an API key may do (docs/security.md): ``ingest`` publishes events, ``read`` gets
#: recommendations and scores, ``admin`` operates the gate and the model (and implies ``read``).
Scope = Literal["ingest", "read", "admin"]


class ApiKeyEntry(BaseModel):
    """One configured API key: never the key itself, only its salted hash (``recstream keys create``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Who holds the key; shown in logs, never secret.")
    scopes: list[Scope] = Field(min_length=1)
    hash: str = Field(pattern=r"^sha256\$[0-9a-f]{32}\$[0-9a-f]{64}$", description="`sha256$<salt hex>$<digest hex>`.")


def _gate_settings() -> type[BaseSettings]:
    """One ``gate_<name>`` setting per field of :class:`learner.gate.gate.GateConfig` (single source of truth)."""
    types = {"bool": bool, "int": int, "float": float}
    definitions: dict[str, Any] = {}
    for f in dataclasses.fields(GateConfig):
        kind = types[str(f.type)]
        described = f"Quality gate: `{f.name}` (docs/quality-gate.md)."
        definitions[f"gate_{f.name}"] = (kind, Field(f.default, description=described))
    return create_model("GateSettings", __base__=BaseSettings, **definitions)


#: Names no challenger may have: ``{prefix}:challenger:{name}`` holds a challenger's state, and these two such keys are
#: the contest's standings and an operator's pending promotion (store/keys.py: Keys.contest, Keys.challenger_request).
RESERVED_CHALLENGER_NAMES = frozenset({"contest", "promote"})


class ChallengerSpec(BaseModel):
    """One challenger: a unique name, a model kind and its constructor parameters.

    A bare string is a model kind with default parameters, named after it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_kind(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value, "model": value}
        if isinstance(value, dict) and "name" not in value and "model" in value:
            return {**value, "name": value["model"]}
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_CHALLENGER_NAMES:
            raise ValueError(
                f"challenger name {value!r} is reserved (its state's Redis key is another key's); choose another"
            )
        return value

    @field_validator("model")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known models: {', '.join(sorted(MODELS))}")
        return value


class Settings(_gate_settings()):  # type: ignore[misc]
    """Typed configuration for the worker, the API and the CLI."""

    # hide_input_in_errors: a refused setting's error never repeats the input (keys, passwords in URLs)
    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", extra="ignore", hide_input_in_errors=True)

    # Connections
    broker_url: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap server(s), `kafka://host:port[,host:port]`."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (`redis://` or `rediss://`, may carry user:password).",
        repr=False,  # (it may carry a password: the settings' repr, and any object's that holds them, leave it out)
    )
    redis_prefix: str = Field("recstream", description="Prefix of every Redis key this service writes.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How the worker, the API and the CLI talk to Kafka: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, "
        "`SASL_SSL` (docs/security.md).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism with `SASL_*` protocols: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name (required with `SASL_*` protocols).")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (required with `SASL_*` protocols; never logged)."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) that verifies the broker with `SSL`/`SASL_SSL`; unset: the system CAs."
    )

    # Topics
    topic_events: str = Field("events", description="Topic the worker consumes and the ingest endpoint produces to.")
    topic_rejected: str = Field(
        "events.rejected", description="Dead-letter topic for payloads that fail the event contract."
    )
    topic_quarantined: str = Field(
        "events.quarantined", description="Topic for events the quality gate held, with their reason code."
    )
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions of the events topic when the service creates it."
    )

    # Worker
    app_id: str = Field("recstream", description="Faust app id, also the Kafka consumer group.")
    checkpoint_every_events: int = Field(
        20000,
        ge=1,
        description="Checkpoint after this many learned events… (under load the interval below sets the cadence up "
        "to 40,000 ev/s; this bounds what is held unacknowledged)",
    )
    checkpoint_interval_seconds: float = Field(
        0.5, gt=0, description="…or after this many seconds, whichever comes first."
    )
    checkpoint_idle_seconds: float = Field(
        0.1,
        ge=0,
        description="…or once the worker has taken nothing for this many seconds after a batch, so the end of a burst "
        "(or a lone event) is served without waiting out the interval; a trickle of messages further apart than this "
        "gets a version each (0: off).",
    )
    checkpoint_catch_up_factor: float = Field(
        1.0,
        ge=1,
        description="Checkpoints by count and by time are this many times further apart while the worker is behind: "
        "more than `RECSTREAM_CHECKPOINT_EVERY_EVENTS` events wait to be learned, in Kafka or in what it took (after a "
        "restart or a burst). 1: off. Measured at 4 on a backlog: one-event messages took ~4% less CPU an event for "
        "~60 MB more peak memory, batch messages no less CPU for ~100 MB more (docs/operations.md).",
    )
    checkpoint_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Most of the worker's time spent writing checkpoints, on average: a time budget earns share s a "
        "second and banks up to 2 s; a checkpoint spends what it took, and while the budget is in debt the next waits "
        "(at most 30 s after one ends). A large model is then checkpointed less often; a long checkpoint among short "
        "ones is paid from the bank (1: off).",
    )
    checkpoint_delta_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="With the default model, a checkpoint writes only what changed since the last version (a "
        "delta); once the deltas since the last whole snapshot add up to more than this share of its size, the whole "
        "snapshot of the last delta version is written over it in the background. Whole at once for a delta above "
        "the share on its own, a chain of 200, after a start or a promotion (0: always whole).",
    )
    batch_max_events: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Largest batch the worker takes from the stream at once, in Kafka messages (one from "
        "`POST /v1/events` holds up to 1,000 events; a bundle, `RECSTREAM_STREAM_BUNDLE_BYTES`, counts as one); it "
        "checkpoints between batches and between their slices "
        "(`RECSTREAM_BATCH_SLICE_BYTES`).",
    )
    batch_slice_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="A batch taken is processed in slices of about this many bytes of messages (~5,000 events a "
        "MiB), with a checkpoint between slices when one is due: a backlog of batch messages (after a restart) "
        "keeps publishing versions, and the events decoded at once stay bounded.",
    )
    model_retention: int = Field(
        5, ge=1, description="Newest model versions kept in Redis (older ones are deleted, except as below)."
    )
    model_keep_every_seconds: float = Field(
        300.0,
        ge=0,
        description="Also keep the first version written in each period of this many seconds… (0: off)",
    )
    model_keep_spaced: int = Field(
        12, ge=0, description="…for this many periods back (rollback reach: an hour by default; 0: off)."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the worker's Prometheus endpoint (0: off)."
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Address the worker's Prometheus endpoint binds.")
    broker_session_timeout: float = Field(10.0, gt=0, description="Kafka consumer session timeout in seconds.")
    worker_lease_seconds: float = Field(
        10.0,
        ge=1,
        le=300,
        description="The writer lease: one worker writes a prefix's model; another started beside it (a rolling "
        "deploy, a standby) waits and takes over once the first stops — at once after SIGTERM, within this many "
        "seconds after a SIGKILL. The holder renews it every third of this time.",
    )
    broker_fetch_max_wait_seconds: float = Field(
        0.1,
        gt=0,
        le=30,
        description="Longest the broker holds the worker's fetch when none of its partitions has new data (Faust "
        "alone: 1.5 s, which after any pause of the worker left it idle ~1 s; stream/kafka_consumer.py).",
    )
    broker_fetch_min_bytes: int = Field(
        65_536,
        ge=1,
        le=16 * 1024 * 1024,
        description="Bytes the broker gathers for the worker's fetch before answering it (within the fetch wait): "
        "fewer, larger fetches under load cost the worker and the broker less CPU; 1 answers at once, at the price "
        "of a fetch per producer request (stream/kafka_consumer.py).",
    )
    stream_bundle_bytes: int = Field(
        65_536,
        ge=0,
        le=16 * 1024 * 1024,
        description="Consecutive messages of one partition fetched together reach the worker's stream as one bundle "
        "of up to this many bytes of values, unpacked again into one record each: with one event per message, "
        "~30% less CPU per event (stream/kafka_consumer.py). 0: every message alone.",
    )

    # Model and target variable
    model: str = Field(
        DEFAULT_MODEL, description="Model kind: `item_cooccurrence`, `implicit_mf`, `bpr`, … (docs/model-card.md)."
    )
    model_params: dict[str, Any] = Field(
        default_factory=dict, description='Constructor parameters of the model, JSON (e.g. `{"window": 10}`).'
    )
    challengers: list[ChallengerSpec] = Field(
        default_factory=list,
        description="Shadow models learned on the same stream, JSON list of model kinds or "
        '`{"name", "model", "params"}` (e.g. `["bpr"]`); docs/operations.md, champion / challenger.',
    )
    promote_auto: bool = Field(
        True, description="Promote a challenger automatically when it beats the champion (the rule below)."
    )
    promote_window: int = Field(500, ge=10, description="Paired samples a challenger is compared over.")
    promote_margin: float = Field(
        0.02, ge=0, le=1, description="Hit-rate@10 lead over the champion a challenger needs to be promoted."
    )
    promote_min_z: float = Field(2.0, ge=0, description="McNemar z the lead needs (so that noise is not promoted).")
    promote_hold_windows: int = Field(
        10, ge=0, description="After an operator's promotion or rollback, windows before automatic promotion resumes."
    )
    promote_sample_every: int = Field(
        10, ge=1, description="Every n-th positive event is a paired sample for the contest."
    )
    weight_like: float = Field(1.0, ge=0, description="Learning weight of a like (implicit-feedback models).")
    weight_share: float = Field(0.5, ge=0, description="Learning weight of a share.")
    weight_view: float = Field(1.0, ge=0, description="Weight of a fully watched view (scaled by share watched).")
    weight_skip: float = Field(0.0, ge=0, description="Learning weight of a skip (0: registers the ids only).")
    positive_types: list[str] = Field(["like", "share"], description="Event types that count as 'liked' (JSON list).")
    negative_types: list[str] = Field(["skip"], description="Event types that count as 'not liked' (JSON list).")
    short_watch_fraction: float = Field(
        0.25, ge=0, le=1, description="A view watched for less than this fraction of the item counts as 'not liked'."
    )

    # Quality gate (the rules' thresholds are the RECSTREAM_GATE_* settings below)
    dedupe_retention_seconds: float = Field(
        3600.0, gt=0, description="An event_id learned within this many seconds is a duplicate."
    )
    dedupe_bucket_seconds: float = Field(900.0, gt=0, description="Granularity of the duplicate-detection window.")
    erasure_kept_days: float = Field(
        7.0,
        gt=0,
        description="How long an erased user is remembered (by a salted SHA-256 of their id): their events "
        "stamped before the erasure was asked for are dropped, not learned, for this long. At least the events "
        "topic's retention (Kafka's default is 7 days), so a replay from its start cannot bring them back.",
    )

    # Both services
    blas_threads: int = Field(
        1,
        ge=0,
        description="Threads numpy's matrix products (OpenBLAS) use in each worker and API process. 1: the service "
        "scales by processes, and more threads in each competed for the cores (implicit_mf over 100k items: 2 API "
        "processes served 0.66x what one did with one thread per core, 1.72x with 1); 0: the library's default.",
    )

    # Serving
    k_default: int = Field(10, ge=1, description="Recommendations returned when `k` is not given.")
    k_max: int = Field(100, ge=1, le=1000, description="Largest `k` a client may ask for.")
    api_host: str = Field("127.0.0.1", description="Address `recstream api` binds.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port `recstream api` binds.")
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes `recstream api` runs on its one port (uvicorn's workers; `--workers` overrides). "
        "Each holds the model and its seen sets (memory N times one's); `/metrics` and `/v1/stats` count all of them. "
        "One a core; the worker needs one too.",
    )
    model_poll_seconds: float = Field(
        1.0, gt=0, description="How often the API also polls for a new model version (besides pub/sub)."
    )
    api_seen_cache_items: int = Field(
        1_000_000,
        ge=0,
        description="Seen-set entries an API process holds in memory (~100 B each: an item of a set, and 4 per user "
        "held; LRU by user): a user's seen set is read from Redis on their first request, then kept current from each "
        "checkpoint's additions (the seen log), so recommendations do not wait on Redis for it (0: read it on every "
        "request).",
    )
    model_load_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Most of an API process's time spent loading new versions, on average: a time budget earns "
        "share s a second and banks up to 1 s; a load spends what it took, and while the budget is in debt new "
        "versions wait (large models then skip versions).",
    )
    produce_timeout_seconds: float = Field(
        5.0, gt=0, description="How long ingest waits for the broker before answering 503."
    )
    retry_after_seconds: int = Field(5, ge=1, description="`Retry-After` sent with 503 answers.")
    max_body_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Largest request body accepted (`POST /v1/events`; `/v1/scores` at most 256 KiB, the routes that "
        "take a reason 8 KiB).",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        description="Largest request line and headers accepted (`431` past it, before the app reads them).",
    )

    # Security
    hmac_key: SecretStr | None = Field(
        None,
        description="Key that signs model snapshots (HMAC-SHA256), a long random secret (`openssl rand -hex 32`). "
        "Required: the worker and the API do not start without it; `recstream up` makes its own in `.recstream/`.",
    )
    hmac_previous_keys: list[SecretStr] = Field(
        [],
        description="Keys still accepted for reading snapshots during a rotation, JSON list; new snapshots are "
        "always signed with RECSTREAM_HMAC_KEY (docs/security.md).",
    )
    auth_enabled: bool = Field(
        True,
        description="Require an API key on `/v1/*` (docs/security.md). `false` only for local development; "
        "the API then logs a warning.",
    )
    api_keys: list[ApiKeyEntry] = Field(
        [],
        description='API keys, JSON: `[{"name": …, "scopes": […], "hash": "sha256$…"}]`, scopes from `ingest`, '
        "`read`, `admin` (`recstream keys create`). With auth on and no key, the API refuses to start.",
    )
    rate_limit_enabled: bool = Field(
        True, description="Per-key token buckets in Redis, shared by every API process (429 + `Retry-After`)."
    )
    rate_limit_ingest_per_second: float = Field(
        50.0, gt=0, description="Requests per second one key may make to `POST /v1/events` (each up to 1000 events)."
    )
    rate_limit_ingest_burst: int = Field(100, ge=1, description="Bucket size for ingest: requests allowed at once.")
    rate_limit_read_per_second: float = Field(
        500.0, gt=0, description="Requests per second one key may make to the read endpoints."
    )
    rate_limit_read_burst: int = Field(1000, ge=1, description="Bucket size for the read endpoints.")
    rate_limit_admin_per_second: float = Field(
        2.0, gt=0, description="Requests per second one key may make to the admin endpoints."
    )
    rate_limit_admin_burst: int = Field(20, ge=1, description="Bucket size for the admin endpoints.")
    cors_origins: list[str] = Field(
        [],
        description='Origins allowed to call the API from a browser, JSON list (e.g. `["https://app.example"]`); '
        "empty: CORS off.",
    )

    @field_validator("hmac_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # (RECSTREAM_HMAC_KEY= , or $(cat) of a file not there: as if not set, which says what to do)
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("hmac_key", "hmac_previous_keys")
    @classmethod
    def _not_the_public_key(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        keys = value if isinstance(value, list) else [value]
        if any(key is not None and key.get_secret_value() == PUBLIC_HMAC_KEY for key in keys):
            raise ValueError(
                "this is the development key an older recstream gave as a default; it is in recstream's source, so "
                "anyone who can write to Redis could sign a model with it. Use a long random secret (`openssl rand "
                "-hex 32`); the snapshots signed with it will not load (start the model afresh: docs/security.md)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme not in ("redis", "rediss", "unix"):
            shown = value.split("@")[-1].split("?")[0]  # (never a password, in the authority or the query)
            raise ValueError(f"expected redis://host:port/db, rediss://… (TLS) or unix://…, got {shown!r}")
        return value

    @model_validator(mode="after")
    def _k_default_within_max(self) -> Settings:
        # else every request without a k would be refused, as if the client had asked for too many
        if self.k_default > self.k_max:
            raise ValueError(
                f"RECSTREAM_K_DEFAULT={self.k_default} is above RECSTREAM_K_MAX={self.k_max}: the default k must be "
                "at most the largest k a client may ask for; lower the first or raise the second"
            )
        return self

    @model_validator(mode="after")
    def _challenger_names_unique(self) -> Settings:
        names = [self.model, *(spec.name for spec in self.challengers)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"RECSTREAM_CHALLENGERS: the name(s) {', '.join(repeated)} are used twice (the champion is named "
                f"after RECSTREAM_MODEL={self.model!r}); give each challenger its own name"
            )
        return self

    @model_validator(mode="after")
    def _models_build(self) -> Settings:
        """Each model is built once here and tried on one event (learned, predicted, ranked, saved), so a wrong kind or
        parameter, or a parameter of the wrong type its constructor takes, stops the process at start with the setting
        to mend (the worker would otherwise retry building it forever, or fail at its first event)."""
        models = [("RECSTREAM_MODEL / RECSTREAM_MODEL_PARAMS", self.model, self.model_params)]
        models += [(f"RECSTREAM_CHALLENGERS ({spec.name!r})", spec.model, spec.params) for spec in self.challengers]
        for setting, kind, params in models:
            try:
                model = build_model(kind, **params)
                model.learn_one("user", "item", 1.0)
                model.predict_one("user", "item")
                model.score_all("user")
                model.to_state()
            except Exception as exc:  # noqa: BLE001 - whatever the model's constructor refuses it with
                raise ValueError(f"{setting}: cannot build a {kind!r} model with {params}: {exc}") from None
        return self


def unreadable_setting(exc: Exception) -> str:
    """What a person should change when a setting's value could not even be read (pydantic-settings' ``SettingsError``:
    a variable of a list or object setting that is not JSON), naming the variable but not repeating its value (it may
    hold a secret, such as the API keys' hashes).

    >>> import json
    >>> try:
    ...     json.loads("notjson")
    ... except ValueError as cause:
    ...     exc = ValueError('error parsing value for field "api_keys" from source "EnvSettingsSource"')
    ...     exc.__cause__ = cause
    >>> unreadable_setting(exc)
    'RECSTREAM_API_KEYS: not valid JSON (Expecting value: line 1 column 1 (char 0)); it takes a JSON list'
    """
    found = re.search(r'field "([a-z0-9_]+)"', str(exc))
    field = Settings.model_fields.get(found.group(1)) if found else None
    if found is None or field is None:
        return str(exc)
    origin = typing.get_origin(field.annotation) or field.annotation
    shape = {list: "a JSON list", tuple: "a JSON list", dict: "a JSON object"}.get(origin, "JSON")  # type: ignore[call-overload]
    cause = exc.__cause__
    why = f"not valid JSON ({cause})" if isinstance(cause, ValueError) else "its value could not be read"
    return f"RECSTREAM_{found.group(1).upper()}: {why}; it takes {shape}"


def gate_config(settings: Settings) -> GateConfig:
    return GateConfig(**{f.name: getattr(settings, f"gate_{f.name}") for f in dataclasses.fields(GateConfig)})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
