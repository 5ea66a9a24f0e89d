"""deephash.Searcher: a trained run's index searched from Python, the deephash-search CLI over it, an
unlabelled folder of photos indexed and searched, and evaluation refusing such an index."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import deephash
from deephash.evaluation.run import evaluate_indexes
from deephash.retrieval.index_writer import save_index
from deephash.retrieval.modes import MODES
from deephash.retrieval.searcher import Searcher, image_files, refuse_unlabelled
from deephash.utils.errors import ConfigError, DataError
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny digits run trained and evaluated in-process: checkpoints and index/ on disk."""
    from deephash.train import train

    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        "train",
        [
            "data=digits",
            "model=smallcnn",
            "model.bits=16",
            "trainer=cpu",
            "logger=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=10",
            "trainer.limit_val_batches=2",
            "test=false",
            "retrieval.modes=[hamming]",
        ],
        run_dir,
    )
    train(cfg)
    return run_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A plain folder of images, some in a subfolder, with no classes: sklearn digits saved as PNGs."""
    root = tmp_path_factory.mktemp("photos")
    (root / "holiday").mkdir()
    images = load_digits().images[:15]
    for i, image in enumerate(images):
        where = root / "holiday" if i % 3 == 0 else root
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(where / f"img{i:02d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_search_matches_brute_force_in_every_mode(run, photos):
    searcher = deephash.Searcher.from_run(run)
    store = searcher.store
    queries = [photos / "img01.png", photos / "img02.png"]
    encoded = searcher.encode(queries)
    assert encoded.codes.shape == (2, 2) and encoded.f7.shape == (2, store.feature_dim)
    f7 = np.asarray(store.f7[:], np.float32)
    for mode in MODES:
        results = searcher.search(queries, k=5, mode=mode)
        assert [r.query for r in results] == [str(q) for q in queries]
        for q, result in enumerate(results):
            assert result.mode == mode and len(result.ids) == len(result.index) <= 5
            assert result.ids == [store.ids[i] for i in result.index]
            assert result.labels.tolist() == store.labels[result.index].tolist()
            names = store.manifest["meta"]["class_names"]
            assert result.class_names == [names[c] for c in result.labels]
            assert np.all(np.diff(result.distances) >= 0)
            if mode == "euclidean":  # brute force, ties by index
                l2 = np.linalg.norm(f7 - encoded.f7[q], axis=1)
                assert np.allclose(result.l2, np.sort(l2)[:5], rtol=1e-3, atol=1e-3)
            if mode == "hamming":
                ours = np.unpackbits(encoded.codes[q])
                dist = (np.unpackbits(store.codes, axis=1) != ours).sum(1)
                assert result.hamming.tolist() == np.sort(dist)[:5].tolist()


def test_encode_takes_paths_images_and_tensors_alike(run, photos):
    searcher = Searcher.from_run(run)
    path = photos / "img04.png"
    image = Image.open(path)
    tensor = searcher.transform(image)
    by_path, by_image, by_tensor = (searcher.encode(x) for x in (str(path), image, tensor))
    for other in (by_image, by_tensor):
        assert np.array_equal(by_path.codes, other.codes) and np.allclose(by_path.f7, other.f7)
    with torch.inference_mode():
        codes, f7 = searcher.module.net.encode(tensor[None])
    assert np.array_equal(np.packbits(codes.numpy(), axis=1), by_path.codes)


def test_the_cli_is_a_shell_over_the_api(run, photos):
    from deephash.search import main

    ckpt = str(Searcher.from_run(run).store.manifest["meta"]["checkpoint"])
    query = str(photos / "img07.png")
    out = io.StringIO()
    with redirect_stdout(out):
        main(["--index", str(run / "index"), "--ckpt", ckpt, query, "--k", "4", "--mode", "euclidean"])
    printed = json.loads(out.getvalue())
    api = Searcher.from_index(run / "index", ckpt).search(query, k=4, mode="euclidean")[0]
    assert printed == [
        {"query": query, "mode": "euclidean", "results": json.loads(json.dumps(api.records()))}
    ]
    assert printed[0]["results"][0].keys() == {"rank", "index", "id", "label", "class", "hamming", "l2"}


def test_an_unlabelled_folder_is_indexed_and_searched(run, photos, tmp_path):
    from deephash.index import build

    ckpt = Searcher.from_run(run).store.manifest["meta"]["checkpoint"]
    cfg = compose_config("index", [f"ckpt_path={ckpt}", f"images={photos}", "batch_size=4"], tmp_path)
    manifest = build(cfg)
    index_dir = Path(ckpt).parent.parent / f"index-{photos.name}"
    assert manifest["count"] == 15 and manifest["index_dir"] == str(index_dir)
    assert (index_dir / "manifest.json").is_file()
    assert image_files(photos)[:2] == ["holiday/img00.png", "holiday/img03.png"]

    searcher = Searcher.from_index(index_dir, ckpt)
    assert not searcher.labelled and searcher.store.count == 15
    result = searcher.search(photos / "holiday" / "img06.png", k=3)[0]
    assert result.ids[0] == "holiday/img06.png" and result.l2[0] == pytest.approx(0, abs=1e-2)
    assert result.labels is None and result.class_names is None
    assert result.records()[0]["label"] is None and "class" not in result.records()[0]

    with pytest.raises(ConfigError, match=r"^index .* is unlabelled \(built from a plain image folder\)"):
        refuse_unlabelled(index_dir)
    rcfg = compose_config("eval", ["ckpt_path=x"], tmp_path).retrieval
    with pytest.raises(ConfigError, match="retrieval metrics need labels"):
        evaluate_indexes(rcfg, searcher.store, searcher.store, None, tmp_path)
    refuse_unlabelled(run / "index")  # a labelled index passes
    refuse_unlabelled(tmp_path / "nothing-here")


def test_bad_input_is_one_line(run, tmp_path):
    searcher = Searcher.from_run(run)
    with pytest.raises(ConfigError, match="mode must be one of hamming"):
        searcher.search(torch.zeros(1, 8, 8), mode="nearest")
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        searcher.search(torch.zeros(1, 8, 8), k=0)
    with pytest.raises(ConfigError, match=r"has no index/ \(a run trained with evaluate=true has one"):
        Searcher.from_run(tmp_path)
    with pytest.raises(DataError, match="no images"):
        image_files(tmp_path)
    with pytest.raises(DataError, match="query image not found"):
        searcher.search(tmp_path / "missing.png")
    for wrong in (
        torch.zeros(3, 8, 8),
        torch.zeros(8, 8),
        torch.zeros(2, 1, 8, 9),
        torch.zeros(1, 8, 8, dtype=torch.uint8),
    ):
        with pytest.raises(
            ConfigError, match=r"a query tensor must be a preprocessed float image of shape 1x8x8"
        ):
            searcher.search(wrong)


@pytest.mark.parametrize("mode", MODES)
def test_no_queries_give_no_results_in_every_mode(run, mode):
    assert Searcher.from_run(run).search([], mode=mode) == []


def test_readme_example_runs(run, photos, capsys):
    """The README's notebook example, on this run and these photos."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- example: searcher -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README.md lost its Searcher example"
    code = block.group(1).replace("outputs/demo/2024-05-01_12-00-00", str(run))
    code = code.replace("my_photo.png", str(photos / "img05.png"))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[0].startswith("1 ")


def test_shards_and_codecs_search_through_the_api_and_the_cli(run, photos, tmp_path):
    from deephash.index import main as index_main
    from deephash.search import main as search_main

    whole = Searcher.from_run(run)
    store, ckpt = whole.store, str(whole.store.manifest["meta"]["checkpoint"])
    f7 = np.asarray(store.f7[:], np.float32)
    cut = store.count // 3

    def save(path, rows, codec="float16"):
        return save_index(
            path,
            codes_packed=store.codes[rows],
            f7=f7[rows],
            labels=store.labels[rows],
            ids=[store.ids[i] for i in range(store.count)[rows]],
            bits=store.bits,
            meta=store.manifest["meta"],
            codec=codec,
            codec_train_rows=500,
        )

    shards = [save(tmp_path / "s0", slice(0, cut)), save(tmp_path / "s1", slice(cut, None))]
    with redirect_stdout(io.StringIO()):
        index_main(["shards", str(tmp_path / "list"), *map(str, shards)])
    queries = [photos / "img01.png", photos / "img05.png"]
    for source in (shards, tmp_path / "list" / "shards.json"):
        sharded = Searcher.from_index(source, ckpt)
        for mode in MODES:
            for a, b in zip(whole.search(queries, k=6, mode=mode), sharded.search(queries, k=6, mode=mode)):
                assert a.records() == b.records()
    out = io.StringIO()
    with redirect_stdout(out):
        search_main(["--index", str(shards[0]), "--index", str(shards[1]), "--ckpt", ckpt, str(queries[0])])
    assert json.loads(out.getvalue())[0]["results"] == json.loads(
        json.dumps(whole.search(queries[0])[0].records())
    )
    pq = Searcher.from_index(save(tmp_path / "pq", slice(None), "pq8"), ckpt)
    for mode in ("hierarchical", "euclidean"):
        result = pq.search(queries[0], k=6, mode=mode)[0]
        assert len(result.index) == 6 and np.all(np.diff(result.l2) >= 0)
        rebuilt = pq.store.f7[result.index]  # ADC is the distance to the PQ reconstructions
        query = pq.encode(queries[0]).f7
        assert np.allclose(result.l2, np.linalg.norm(rebuilt - query, axis=1), rtol=1e-3, atol=1e-3)
