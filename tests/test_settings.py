"""Configuration refused at start, with the variable to mend: a model kind or a model parameter that does not exist
(the worker would otherwise retry building it forever), and the examples the docs give accepted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.auth import hash_key, new_key
from recstream.components import snapshot_signer
from recstream.embedded import HMAC_KEY_FILE, OUTSIDE_KEY_FILE, local_hmac_key, refuse_unkeyed_state
from recstream.settings import PUBLIC_HMAC_KEY, Settings
from store.keys import Keys
from store.signing import KeyMissing
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"model": "nope"}, "RECSTREAM_MODEL / RECSTREAM_MODEL_PARAMS: cannot build a 'nope' model"),
        (
            {"model": "implicit_mf", "model_params": {"factors": 64}},
            "RECSTREAM_MODEL / RECSTREAM_MODEL_PARAMS: cannot build a 'implicit_mf' model with {'factors': 64}",
        ),
        (
            {"model": "implicit_mf", "model_params": {"n_factors": -1}},
            "cannot build a 'implicit_mf' model with {'n_factors': -1}",
        ),
        (  # taken by the constructor, refused by the first event
            {"model": "implicit_mf", "model_params": {"lr": "fast"}},
            "RECSTREAM_MODEL / RECSTREAM_MODEL_PARAMS: cannot build a 'implicit_mf' model with {'lr': 'fast'}",
        ),
        (
            {"challengers": [{"name": "mf-64", "model": "implicit_mf", "params": {"factors": 64}}]},
            "RECSTREAM_CHALLENGERS ('mf-64'): cannot build a 'implicit_mf' model",
        ),
    ],
)
def test_a_model_that_cannot_be_built_is_refused_naming_its_setting(given: dict, named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**given)
    assert named in str(refused.value)


def test_models_that_can_be_built_are_accepted() -> None:
    settings = Settings(
        model="implicit_mf",
        model_params={"n_factors": 16},
        challengers=["bpr", {"name": "mf-64", "model": "implicit_mf", "params": {"n_factors": 64}}],
    )
    assert [spec.name for spec in settings.challengers] == ["bpr", "mf-64"]


@pytest.mark.parametrize("name", ["contest", "promote"])
def test_a_challenger_named_after_another_redis_key_is_refused(name: str) -> None:
    # its state would be written over the contest's standings or an operator's pending promotion
    keys = Keys("p")
    assert keys.challenger(name) in {keys.contest, keys.challenger_request}
    with pytest.raises(ValidationError, match=f"challenger name '{name}' is reserved"):
        Settings(challengers=[{"name": name, "model": "bpr"}])
    Settings(challengers=[{"name": f"{name}-2", "model": "bpr"}])


def test_the_docs_challenger_examples_are_accepted() -> None:
    pattern = re.compile(r"RECSTREAM_CHALLENGERS='([^']*)'")
    found = [
        match.group(1)
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for match in pattern.finditer(doc.read_text())
    ]
    assert found, "no example found: the pattern no longer matches how the docs write them"
    for value in found:
        Settings(challengers=json.loads(value))


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("RECSTREAM_MODEL", "nope", "RECSTREAM_MODEL / RECSTREAM_MODEL_PARAMS: cannot build a 'nope' model"),
        ("RECSTREAM_PROMOTE_WINDOW", "3", "RECSTREAM_PROMOTE_WINDOW: Input should be greater than or equal to 10"),
        ("RECSTREAM_CHALLENGERS", '[{"name": "m m", "model": "bpr"}]', "RECSTREAM_CHALLENGERS[0].name: String should"),
        ("RECSTREAM_REDIS_URL", "127.0.0.1:6379", "RECSTREAM_REDIS_URL: expected redis://host:port/db"),
        ("RECSTREAM_CHALLENGERS", "[oops", "RECSTREAM_CHALLENGERS: not valid JSON (Expecting value: line 1 column 2"),
        (
            "RECSTREAM_API_KEYS",
            "notjson",
            "RECSTREAM_API_KEYS: not valid JSON (Expecting value: line 1 column 1 (char 0)); it takes a JSON list",
        ),
        ("RECSTREAM_MODEL_PARAMS", "{oops", "RECSTREAM_MODEL_PARAMS: not valid JSON (Expecting property name"),
        ("RECSTREAM_K_DEFAULT", "500", "RECSTREAM_K_DEFAULT=500 is above RECSTREAM_K_MAX=100"),
        ("RECSTREAM_REDIS_URL", "http://ops:s3cret@db:6379/0", "RECSTREAM_REDIS_URL: expected redis://"),
    ],
)
def test_the_worker_refuses_bad_configuration_in_one_line_without_a_traceback(
    variable: str, value: str, said: str
) -> None:
    env = {**os.environ, variable: value}
    # refused before it connects to anything: a started worker would outlive the timeout (and be killed by it)
    done = run_cli("worker", env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"recstream worker: invalid configuration: {said}" in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr  # a password in a refused URL is not printed


def test_the_public_development_key_is_refused() -> None:
    for given in ({"hmac_key": PUBLIC_HMAC_KEY}, {"hmac_key": "k2", "hmac_previous_keys": ["k1", PUBLIC_HMAC_KEY]}):
        with pytest.raises(ValidationError, match="the development key an older recstream gave as a default"):
            Settings(**given)
    env = {**os.environ, "RECSTREAM_HMAC_KEY": PUBLIC_HMAC_KEY}
    done = run_cli("worker", env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "recstream worker: invalid configuration: RECSTREAM_HMAC_KEY: this is the development key" in done.stderr
    assert PUBLIC_HMAC_KEY not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [("worker",), ("api", "--port", "0"), ("api", "--port", "0", "--workers", "2")])
def test_the_worker_and_the_api_do_not_start_without_a_snapshot_key(command: tuple[str, ...]) -> None:
    env = {name: value for name, value in os.environ.items() if name != "RECSTREAM_HMAC_KEY"}
    env["RECSTREAM_API_KEYS"] = json.dumps([{"name": "ops", "scopes": ["admin"], "hash": hash_key(new_key())}])
    done = run_cli(*command, env=env)  # refused before it connects to anything (nothing listens at the defaults)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"recstream {command[0]}: RECSTREAM_HMAC_KEY is not set: it signs the model snapshots" in done.stderr
    assert "Traceback" not in done.stderr and "Started parent process" not in done.stderr


def test_an_empty_snapshot_key_is_no_key() -> None:
    assert Settings(hmac_key="").hmac_key is None and Settings(hmac_key="  ").hmac_key is None
    env = {**os.environ, "RECSTREAM_HMAC_KEY": ""}
    done = run_cli("worker", env=env)
    assert done.returncode == 2 and "RECSTREAM_HMAC_KEY is not set" in done.stderr, done.stderr[-2000:]


def test_without_a_snapshot_key_nothing_is_signed_or_verified() -> None:
    signer = snapshot_signer(Settings(hmac_previous_keys=["k1"]))  # (a previous key alone verifies nothing either)
    for attempt in (lambda: signer.sign(b"blob"), lambda: signer.verify(b"blob", b"tag")):
        with pytest.raises(KeyMissing, match="RECSTREAM_HMAC_KEY is not set"):
            attempt()


def test_a_local_run_makes_its_own_snapshot_key_once(tmp_path: Path) -> None:
    key = local_hmac_key(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert (tmp_path / HMAC_KEY_FILE).stat().st_mode & 0o777 == 0o600  # owner-only
    assert local_hmac_key(tmp_path) == key  # the next run reads the snapshots the first one signed
    other = tmp_path / "other"
    other.mkdir()
    assert local_hmac_key(other) != key  # random: another state directory, another key
    assert sorted(p.name for p in tmp_path.iterdir()) == [HMAC_KEY_FILE, "other"]  # no file left half made


def test_a_state_directory_signed_with_the_public_key_is_refused_naming_how_to_start_afresh(tmp_path: Path) -> None:
    refuse_unkeyed_state(tmp_path)  # nothing there yet: a new run
    (tmp_path / "redis").mkdir()  # a Redis an older recstream made, before runs had their own key
    with pytest.raises(SystemExit, match=r"signed with its public development key.*to start afresh: rm -rf "):
        refuse_unkeyed_state(tmp_path)
    (tmp_path / OUTSIDE_KEY_FILE).touch()  # ... or a run given RECSTREAM_HMAC_KEY made it: that key is wanted again
    with pytest.raises(SystemExit, match=r"signed with the RECSTREAM_HMAC_KEY an earlier run was given; set it again"):
        refuse_unkeyed_state(tmp_path)
    local_hmac_key(tmp_path)
    refuse_unkeyed_state(tmp_path)  # (a run with its own key made that Redis)
    (tmp_path / HMAC_KEY_FILE).write_text(PUBLIC_HMAC_KEY + "\n")  # the key file an older recstream wrote then
    with pytest.raises(SystemExit, match=r"holds the public development key .* to start afresh: rm -rf "):
        local_hmac_key(tmp_path)


def test_an_empty_key_file_stops_the_run_naming_it(tmp_path: Path) -> None:
    (tmp_path / HMAC_KEY_FILE).write_text("")
    with pytest.raises(SystemExit, match=f"{HMAC_KEY_FILE} holds no key; delete it"):
        local_hmac_key(tmp_path)


def test_the_settings_repr_leaves_out_every_secret() -> None:
    settings = Settings(redis_url="redis://ops:s3cretpw@db:6379/0", hmac_key="hm4c", kafka_sasl_password="s4sl")
    for secret in ("s3cretpw", "hm4c", "s4sl"):
        assert secret not in repr(settings) and secret not in str(settings)
    assert settings.redis_url == "redis://ops:s3cretpw@db:6379/0"  # (still there for the clients)
