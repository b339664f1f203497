"""The snapshot byte format: the documented layout, whatever the arrays' order and byte order."""

from __future__ import annotations

import json
import struct

import numpy as np

from learner import codec


def _reference(header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    """The layout as documented in :mod:`learner.codec`, written out the plain way: the header
    (as JSON text may be written more than one way, its value) and the array bytes after it."""
    specs, chunks = [], []
    for name, array in arrays.items():
        little = np.asarray(array, dtype=array.dtype.newbyteorder("<"))
        specs.append({"name": name, "dtype": little.dtype.str, "shape": list(little.shape)})
        chunks.append(little.tobytes(order="C"))
    return {**header, "arrays": specs}, b"".join(chunks)


def _layout(blob: bytes) -> tuple[dict, bytes]:
    """Split a blob by the documented layout: magic, 8-byte big-endian length, UTF-8 JSON, arrays."""
    assert blob.startswith(codec.MAGIC)
    (head_len,) = struct.unpack(">Q", blob[len(codec.MAGIC) : len(codec.MAGIC) + 8])
    start = len(codec.MAGIC) + 8
    return json.loads(blob[start : start + head_len].decode("utf-8")), blob[start + head_len :]


def test_encode_writes_the_documented_layout_and_decodes_back() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f8": rng.normal(size=7),
        "f4_2d": rng.normal(size=(3, 4)).astype(np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 3))),
        "strided": np.arange(20, dtype=np.int64)[::3],
        "big_endian": np.arange(5, dtype=">i4"),
        "empty": np.zeros((0, 10), dtype=np.int32),
        "u8": np.array([1, 2**63], dtype=np.uint64),
    }
    blob = codec.encode({"kind": "demo", "ids": ["a", "é"]}, arrays)
    assert _layout(blob) == _reference({"kind": "demo", "ids": ["a", "é"]}, arrays)
    header, decoded = codec.decode(blob)
    assert header == {"kind": "demo", "ids": ["a", "é"]}
    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array, err_msg=name)
        assert decoded[name].shape == array.shape


def test_every_models_snapshot_header_reads_back_as_written() -> None:
    """The header is written with orjson; what json reads back is the header itself, for every model."""
    import random

    from learner.online_learner import OnlineLearner
    from learner.registry import MODELS, build_model

    for kind in sorted(MODELS):
        learner = OnlineLearner(model=build_model(kind))
        rnd = random.Random(0)
        for _ in range(2000):
            kind_of_event = rnd.choice(["like", "view", "skip", "share"])
            learner.learn(f"u{rnd.randrange(50)}", f"v{rnd.randrange(80)}", kind_of_event, None, None)
        state = learner.model.to_state()
        header, _ = codec.decode(learner.to_bytes())
        assert header["params"] == json.loads(json.dumps(state.params)), kind
        assert header["ids"] == state.ids, kind
        assert header["events_learned"] == learner.events_learned > 0, kind


def test_a_header_json_would_write_otherwise_is_refused() -> None:
    for bad in (
        {"x": float("nan")},
        {"p": {"lr": float("inf")}},
        {"ids": ["a", float("nan")]},  # a list that starts like an id list is looked at too
        {"n": 2**70},
        {1: "int key"},
        # a NaN next to ids holding "null": wherever it lands (first, last, in a list, in a dict), it is looked for
        {"ids": ["null", "x,null]"], "p": {"z": float("-inf")}},
        {"ids": ["nullable"], "x": [float("nan")]},
        {"ids": ["null"], "x": [1.0, float("nan"), 2.0]},
        {"x": float("nan"), "ids": ["null"]},
    ):
        try:
            codec.encode(bad, {})
        except codec.CodecError:
            continue
        raise AssertionError(f"{bad} was encoded")
    header, _ = codec.decode(codec.encode({"clock": None, "ids": ["null"]}, {}))
    assert header == {"clock": None, "ids": ["null"]}


def test_ids_that_contain_null_do_not_make_the_header_walked(monkeypatch) -> None:
    walked = []
    monkeypatch.setattr(codec, "_refuse_non_finite", walked.append)
    codec.encode({"ids": ["null", "nullable", "a-null"], "clock": 1.0}, {})
    assert walked == []  # no null value in the JSON: nothing to look for
    codec.encode({"ids": ["nullable"], "clock": None}, {})
    assert len(walked) == 1  # a null value: walked (a NaN would have been written so)
