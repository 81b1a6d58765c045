"""read_text, read_binary_files, read_images, read_numpy/write_numpy, read_libsvm, read_sql and
Delta Lake tables, end to end on the local cluster."""
from __future__ import annotations

import sqlite3

import numpy as np
import pyarrow.compute as pc
import pytest

import shoal.data as sd
from shoal.exceptions import DataError, InvalidInputError

pytestmark = pytest.mark.usefixtures("cluster")


def test_read_text_gives_one_row_per_line_across_files(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\nsecond\n")
    (tmp_path / "b.txt").write_text("third\r\nfourth")
    ds = sd.read_text(tmp_path, include_paths=True)
    rows = ds.take_all()
    assert [r["text"] for r in rows] == ["first", "second", "third", "fourth"]
    assert rows[0]["path"].endswith("a.txt") and rows[3]["path"].endswith("b.txt")
    kept = sd.read_text(tmp_path / "a.txt", drop_empty_lines=False).take_all()
    assert [r["text"] for r in kept] == ["first", "", "second"]


def test_read_text_names_a_file_in_another_encoding(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin\.txt.*utf-8"):
        sd.read_text(tmp_path).take_all()
    assert sd.read_text(tmp_path, encoding="latin-1").take_all() == [{"text": "café"}]


def test_read_binary_files_keeps_every_byte(tmp_path):
    blobs = {f"f{i}.bin": bytes(np.random.default_rng(i).integers(0, 256, 100 + i, np.uint8))
             for i in range(5)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    rows = sd.read_binary_files(tmp_path, include_paths=True, override_num_blocks=2).take_all()
    assert len(rows) == 5
    assert {r["path"].rsplit("/", 1)[1]: r["bytes"] for r in rows} == blobs


def test_read_images_makes_a_tensor_column_and_resizes(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (6, 4, 3), np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"im{i}.png")
    Image.fromarray(rng.integers(0, 256, (9, 9), np.uint8)).save(tmp_path / "odd.png")
    same = sd.read_images(sorted(tmp_path.glob("im*.png")))
    images = np.stack([r["image"] for r in same.take_all()])
    np.testing.assert_array_equal(images, np.stack(pixels))   # PNG is lossless
    with pytest.raises(InvalidInputError, match=r"odd\.png.*size=\(height, width\)"):
        sd.read_images(tmp_path, override_num_blocks=1).take_all()
    resized = sd.read_images(tmp_path, size=(5, 7), mode="RGB").take_all()
    assert len(resized) == 4 and {r["image"].shape for r in resized} == {(5, 7, 3)}


def test_read_images_rejects_a_file_that_is_no_image(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match=r"broken\.png.*not a readable image"):
        sd.read_images(tmp_path).take_all()


def test_numpy_files_round_trip_and_pickles_are_refused(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    files = sd.from_numpy(x, override_num_blocks=3).write_numpy(tmp_path / "out")
    assert len(files) == 3 and all(f.endswith(".npy") for f in files)
    back = np.stack([r["data"] for r in sd.read_numpy(tmp_path / "out").take_all()])
    np.testing.assert_array_equal(back, x)
    with pytest.raises(InvalidInputError, match="write_numpy.*'nope'"):
        sd.from_numpy(x).write_numpy(tmp_path / "o2", column="nope")
    np.save(tmp_path / "objs.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInputError, match=r"objs\.npy.*pickled"):
        sd.read_numpy(tmp_path / "objs.npy").take_all()


def test_read_libsvm_matches_scikit_learns_reader(tmp_path):
    from sklearn.datasets import dump_svmlight_file, load_svmlight_file

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 12)) * (rng.random((50, 12)) < 0.3)
    y = rng.integers(0, 2, 50).astype(float)
    for i in range(2):
        dump_svmlight_file(X[i * 25:(i + 1) * 25], y[i * 25:(i + 1) * 25],
                           str(tmp_path / f"part{i}.txt"), zero_based=False)
    ds = sd.read_libsvm(tmp_path)
    rows = ds.take_all()
    got = np.stack([r["features"] for r in rows])
    # the width is the largest index present: trailing all-zero columns are not in the file
    width = max(np.nonzero(X.any(axis=0))[0]) + 1
    ref, ref_y = load_svmlight_file(str(tmp_path / "part0.txt"), zero_based=False,
                                    n_features=width)
    np.testing.assert_allclose(got[:25], ref.toarray())
    np.testing.assert_allclose(got, X[:, :width])
    np.testing.assert_array_equal([r["label"] for r in rows], y)
    assert sd.read_libsvm(tmp_path, num_features=20).take(1)[0]["features"].shape == (20,)
    (tmp_path / "bad.txt").write_text("1 3:0.5 x\n")
    with pytest.raises(InvalidInputError, match=r"bad\.txt' line 1"):
        sd.read_libsvm(tmp_path / "bad.txt", num_features=5).take_all()


@pytest.fixture
def sqlite_db(tmp_path):
    path = str(tmp_path / "shop.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sales (id INTEGER, item TEXT, price REAL)")
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?)",
                         [(i, f"item{i % 7}", i * 0.5 if i % 11 else None) for i in range(200)])
    return path


def test_read_sql_reads_a_query_in_one_or_several_windows(sqlite_db):
    def connect():
        return sqlite3.connect(sqlite_db)

    one = sd.read_sql("SELECT id, item, price FROM sales WHERE id < 50", connect)
    rows = one.take_all()
    assert len(rows) == 50 and rows[3] == {"id": 3, "item": "item3", "price": 1.5}
    assert rows[11]["price"] is None
    many = sd.read_sql("SELECT * FROM sales ORDER BY id", connect, override_num_blocks=4)
    assert many.num_blocks() == 4
    assert [r["id"] for r in many.take_all()] == list(range(200))
    assert many.filter(expr=pc.field("price") > 90).count() == 17


def test_read_sql_errors_name_the_problem(sqlite_db):
    with pytest.raises(InvalidInputError, match="callable"):
        sd.read_sql("SELECT 1", sqlite_db)
    with sqlite3.connect(sqlite_db) as conn:
        conn.execute("CREATE TABLE mixed (v)")
        conn.executemany("INSERT INTO mixed VALUES (?)", [(1,), ("two",)])
    with pytest.raises(InvalidInputError, match="column 'v' mixes value types"):
        sd.read_sql("SELECT v FROM mixed", lambda: sqlite3.connect(sqlite_db)).take_all()


def test_delta_tables_write_read_and_travel_in_time(tmp_path):
    pytest.importorskip("deltalake")
    path = str(tmp_path / "table")
    first = sd.from_items([{"id": i, "part": "ab"[i % 2], "x": float(i)} for i in range(40)],
                          override_num_blocks=4)
    first.write_delta(path, partition_by=["part"])
    sd.from_items([{"id": 100 + i, "part": "c", "x": -1.0} for i in range(5)]).write_delta(path)
    now = sd.read_delta(path)
    assert now.count() == 45 and sorted(now.unique("part")) == ["a", "b", "c"]
    old = sd.read_delta(path, version=0)
    assert sorted(r["id"] for r in old.take_all()) == list(range(40))
    picked = sd.read_delta(path, columns=["id"], filter=pc.field("part") == "c")
    assert sorted(r["id"] for r in picked.take_all()) == list(range(100, 105))
    sd.from_items([{"id": 0, "part": "z", "x": 0.0}]).write_delta(path, mode="overwrite")
    assert sd.read_delta(path).count() == 1 and sd.read_delta(path, version=1).count() == 45


def test_delta_errors_name_the_table(tmp_path):
    pytest.importorskip("deltalake")
    with pytest.raises(DataError, match="not a Delta table"):
        sd.read_delta(str(tmp_path / "nothing"))
    path = str(tmp_path / "t")
    sd.from_items([{"a": 1}]).write_delta(path)
    with pytest.raises(DataError, match="version=7"):
        sd.read_delta(path, version=7)
    with pytest.raises(InvalidInputError, match="empty"):
        sd.from_items([{"a": 1}]).filter(lambda r: False).write_delta(path)
