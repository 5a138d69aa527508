"""Factor files in every accepted format, and the clear refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ropeconvert.convert.factor_files import load_factor_file
from ropeconvert.errors import InputError

F = [1.0 + 0.25 * i for i in range(8)]


def test_one_float_per_line(tmp_path):
    p = tmp_path / "result_final.csv"
    np.savetxt(p, F, delimiter="\n")  # exactly how LongRoPE's search writes it (%.18e)
    assert load_factor_file(p).long == tuple(F)


def test_single_row_and_identical_per_layer_rows(tmp_path):
    (tmp_path / "row.csv").write_text(",".join(map(str, F)))
    assert load_factor_file(tmp_path / "row.csv").long == tuple(F)
    (tmp_path / "layers.csv").write_text("\n".join([",".join(f"{x:16.16f}" for x in F)] * 32))
    assert load_factor_file(tmp_path / "layers.csv").long == pytest.approx(tuple(F))


def test_per_layer_rows_that_differ_are_refused(tmp_path):
    rows = [",".join(map(str, F))] * 3 + [",".join(map(str, F[:-1] + [9.0]))]
    (tmp_path / "bad.csv").write_text("\n".join(rows))
    with pytest.raises(InputError, match=r"per-layer factors differ \(row 3"):
        load_factor_file(tmp_path / "bad.csv")


def test_json_list_and_objects(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(F))
    assert load_factor_file(tmp_path / "a.json").long == tuple(F)
    (tmp_path / "b.json").write_text(json.dumps({"long_factor": F, "short_factor": [1.0] * 8}))
    got = load_factor_file(tmp_path / "b.json")
    assert got.long == tuple(F) and got.short == (1.0,) * 8


def test_phi3_config(tmp_path):
    cfg = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
           "rope_scaling": {"type": "longrope", "long_factor": F, "short_factor": [1.0] * 8}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    got = load_factor_file(tmp_path / "config.json")
    assert got.long == tuple(F) and got.original_context == 4096 and got.target_context == 131072


@pytest.mark.parametrize("content,needle", [
    ("1.0\nabc\n", "line 2 is not a list of numbers"),
    ("", "holds no numbers"),
    ("{not json", "is not valid JSON"),
    ('{"long_factor": [1, "x"]}', "long_factor[1] = 'x' is not a number"),
    ('{"something": 1}', "no factor list found"),
    ("1,2\n1,2,3\n", "rows have different lengths"),
])
def test_malformed(tmp_path, content, needle):
    p = tmp_path / "f.txt"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        load_factor_file(p)
    assert needle in e.value.one_line()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_factor_file(tmp_path / "nope.csv")
