import json

import pandas as pd
import pytest

from helpers import io as hio


def test_atomic_write_leaves_no_temp_file(tmp_path):
    p = hio.atomic_write_json(tmp_path / "a" / "m.json", {"b": 1, "a": 2})
    assert json.loads(p.read_text()) == {"a": 2, "b": 1}
    assert [x.name for x in p.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "m.json"
    hio.atomic_write_json(p, {"ok": 1})
    with pytest.raises(TypeError):
        hio.atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_frame_hash_is_content_based():
    a = pd.DataFrame({"x": [1, 2]})
    assert hio.frame_hash(a) == hio.frame_hash(a.copy())
    assert hio.frame_hash(a) != hio.frame_hash(pd.DataFrame({"x": [2, 1]}))
