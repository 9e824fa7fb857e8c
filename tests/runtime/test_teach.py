"""Teaching new classes on the device: the numpy learner against scikit-learn on real embeddings, its stored form,
and what bad input gets."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import pocketvision as pv
from helpers import one_line_error, run_cli
from pocketvision.deploy.artifact import open_predictor
from pocketvision.errors import PocketVisionError
from pocketvision.export import check_request
from pocketvision.runtime.teach import PersonalHead, Teacher, anchors_of, fit_head, unit_rows
from pocketvision.tasks import get_task


@pytest.fixture(scope="module")
def dish_embeddings(shared_data):
    """EfficientNet-Lite0's ImageNet embeddings (the backbone alone: a model created on the device) of 5 training
    and 8 held-out photos of each of the ten dishes."""
    import torch

    from pocketvision.core.contract import Contract
    from pocketvision.models.registry import build_model, model_entry
    root = shared_data / "dishes"
    if not (root / "train").is_dir():
        pytest.fail(f"the dishes set is missing at {root}")
    model = build_model({"name": "efficientnet_lite0", "args": {"num_classes": 1000}}, pretrained=True).eval()
    contract = Contract.from_dict(model_entry("efficientnet_lite0").default_contract)
    out = {}
    for split, n in (("train", 5), ("eval", 8)):
        files = [(f, c.name) for c in sorted((root / split).iterdir()) for f in sorted(c.iterdir())[:n]]
        pixels = np.stack([contract.load(f) for f, _ in files])
        with torch.no_grad():
            e = model.forward_features(torch.from_numpy(contract.normalize(pixels))).numpy()
        out[split] = (e, [c for _, c in files])
    return out


@pytest.mark.shared_data
def test_the_learner_matches_scikit_learn_on_real_embeddings(dish_embeddings):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    (xtr, ytr), (xev, yev) = dish_embeddings["train"], dish_embeddings["eval"]
    head = fit_head(xtr, ytr)
    assert head.labels == sorted(set(ytr)) and head.features == 1280
    ours = np.array([r["label"] for r in head.predict(xev)])
    ref = LogisticRegression(C=1.0, max_iter=5000).fit(unit_rows(xtr), ytr)  # the same objective, solved by L-BFGS
    theirs = ref.predict(unit_rows(xev))
    acc, ref_acc = (ours == np.array(yev)).mean(), (theirs == np.array(yev)).mean()
    assert abs(acc - ref_acc) <= 0.0125 and (ours == theirs).mean() >= 0.95, (acc, ref_acc)
    assert np.abs(head.probabilities(xev) - ref.predict_proba(unit_rows(xev))).max() < 0.02
    knn = KNeighborsClassifier(1, metric="cosine").fit(xtr, ytr).predict(xev)
    assert acc >= (knn == np.array(yev)).mean() + 0.03, acc  # 5 examples a class: ahead of nearest-neighbour
    assert acc > 0.4  # ten dishes; chance is 0.1

    # the stored form is JSON and gives the same answers; a tampered one is refused with one line
    back = PersonalHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert [r["label"] for r in back.predict(xev)] == list(ours)
    bad = head.to_dict() | {"bias": [0.0]}
    with pytest.raises(PocketVisionError, match="teach the classes again"):
        PersonalHead.from_dict(bad)
    with pytest.raises(PocketVisionError, match="not readable"):
        PersonalHead.from_dict({"kind": "pocketvision.personal_head", "version": 1})
    with pytest.raises(PocketVisionError, match="1280-long embeddings; the model gives 1000"):
        head.predict(np.zeros((1, 1000)))


def test_what_bad_teaching_input_gets():
    e = np.random.default_rng(0).normal(size=(4, 8))
    for args, words in [((e, ["a", "b"]), "4 embeddings but 2 class names"),
                        ((e[:0], []), "non-empty (examples, features)"),
                        ((np.where(np.eye(4, 8) > 0, np.nan, e), list("aabb")), "NaN"),
                        ((e, ["a", "b", " ", "b"]), "non-empty text")]:
        with pytest.raises(PocketVisionError, match=re.escape(words)):
            fit_head(*args)
    one = fit_head(e, ["mug"] * 4)  # a user's first class: always the answer until a second one comes
    assert [r["label"] for r in one.predict(e)] == ["mug"] * 4


def test_the_learner_needs_no_torch():
    code = ("import sys, numpy as np; from pocketvision.runtime.teach import fit_head; "
            "fit_head(np.eye(4), list('abab')); assert 'torch' not in sys.modules, 'torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.browser
def test_a_teachable_export_carries_the_embedding_a_device_learns_on(trained_bundle, trained_onnx, hotdog_small,
                                                                     tmp_path):
    """`export --teachable`: onnx and tflite files and the web page (in Chromium) output the pooled features too, verified against the bundle's;
    a head fitted on the file's embeddings answers as one fitted on the bundle's. Targets and tasks that cannot
    carry it refuse in one line before any work."""
    b = pv.load(trained_bundle)
    r = run_cli("export", str(trained_bundle), "--to", "onnx,tflite,web", "--teachable", "--out-dir", str(tmp_path),
                "--json")
    assert r.returncode == 0, r.stderr
    photos = [p for c in ("hotdog", "not_hotdog") for p in sorted((hotdog_small / "train" / c).iterdir())[:6]]
    names = ["hotdog"] * 6 + ["other"] * 6
    pixels = np.stack([b.contract.load(p) for p in photos])
    want = b.run_outputs(pixels, teachable=True)["embedding"]
    head = fit_head(want, names)
    for res in json.loads(r.stdout):
        emb = res["verification"]["embedding"]
        assert res["verification"]["passed"] and emb["passed"] and emb["min_cosine"] >= 0.9999, res
        with open_predictor(res["path"]) as p:
            teach = p.meta["teach"]
            assert (teach["output"], teach["features"], teach["rows"]) == ("embedding", want.shape[1], "unit length")
            anchors, names_a = anchors_of(p.meta)  # training photos' embeddings: the model's own classes' side
            assert anchors.shape == (64, want.shape[1]) and sorted(set(names_a)) == b.labels
            got = p.run_outputs(pixels)
        assert got["embedding"].shape == want.shape and np.abs(got["embedding"] - want).max() < 1e-3
        assert [x["label"] for x in fit_head(got["embedding"], names).predict(got["embedding"])] == \
            [x["label"] for x in head.predict(want)]
    one_line_error(run_cli("export", str(trained_bundle), "--to", "coreml", "--teachable"), "--teachable", "coreml",
                   "onnx, tflite, web")
    plain = trained_onnx  # the session's export without the flag (conftest): no embedding output, no teach metadata
    with open_predictor(plain.path) as p:
        assert "embedding" not in p.run_outputs(pixels[:1]) and "teach" not in p.meta
        with pytest.raises(PocketVisionError, match="export it with .*--teachable"):  # nothing to teach on
            Teacher(p, tmp_path / "personal")


def test_only_tasks_with_an_embedding_export_teachable():
    assert check_request(get_task("classify"), "onnx", teachable=True).name == "onnx"
    for task in ("keypoints", "stylize"):
        with pytest.raises(PocketVisionError, match=f"--teachable: {task} models have no embedding"):
            check_request(get_task(task), "onnx", teachable=True)


@pytest.mark.shared_data
@pytest.mark.slow
def test_personal_classes_beside_the_models_own(default_start, hotdog_small, shared_data, tmp_path):
    """Two personal classes taught from 10 photos each (numpy and onnxruntime only): they are recognised, the
    model's own answers on its val photos barely change, they survive a restart and a new model (embedded again),
    and bad input loses nothing. The model: the default's start (Lite0, the ImageNet head kept, no epoch)."""
    b = pv.load(default_start)
    onnx = b.export(tmp_path / "t.onnx", teachable=True, verify=False).path
    dishes = shared_data / "dishes"
    taught = {c: sorted((dishes / "train" / c).iterdir())[:10] for c in ("pizza", "sushi")}
    held = {c: sorted((dishes / "eval" / c).iterdir())[:10] for c in taught}
    val = [p for c in b.labels for p in sorted((hotdog_small / "val" / c).iterdir())]
    with open_predictor(onnx) as model:
        own = [r["label"] for r in model.predict(val)]
        t = Teacher(model, tmp_path / "personal")
        assert t.predict(val[:3]) == model.predict(val[:3])  # nothing taught: the model's own answers
        assert [t.add(c, ps) for c, ps in taught.items()] == [10, 10] and t.classes == ["pizza", "sushi"]
        got = {c: [r["label"] for r in t.predict(ps)] for c, ps in held.items()}
        recall = np.mean([lab == c for c, labs in got.items() for lab in labs])
        kept = np.mean([r["label"] == o for r, o in zip(t.predict(val), own)])
        assert recall >= 0.6 and kept >= 0.95, (recall, kept, got)

        # bad input: one line each, nothing taught before lost
        bad = tmp_path / "notes.jpg"
        bad.write_text("not a photo")
        for args, words in [(("ramen", [taught["pizza"][0], bad]), "notes.jpg is not a photo"),
                            (("ramen", []), "at least one example"), ((b.labels[0], taught["pizza"]), "own classes"),
                            (("", taught["pizza"]), "name the class"),
                            ((" Pizza ", taught["pizza"]), "'pizza' is already a class")]:
            with pytest.raises(PocketVisionError, match=words):
                t.add(*args)
        assert t.classes == ["pizza", "sushi"] and len(t.names) == 20

        # a restart: the folder brings the classes back, with the same answers
        again = Teacher(model, tmp_path / "personal")
        assert again.classes == t.classes and again.predict(held["pizza"]) == t.predict(held["pizza"])

    # a new model (here: the same network in LiteRT, int8 ONNX would do too) embeds the kept photos again
    tfl = b.export(tmp_path / "t.tflite", to="tflite", teachable=True, verify=False).path
    with open_predictor(tfl) as new:
        state = tmp_path / "personal" / "state.json"
        state.write_text(json.dumps({"model": "an older model", "version": 1}))
        moved = Teacher(new, tmp_path / "personal")
        assert np.abs(moved.embeddings - t.embeddings).max() < 1e-3  # embedded again, not read back
        assert [r["label"] for r in moved.predict(held["sushi"])] == [r["label"] for r in t.predict(held["sushi"])]
        moved.remove("pizza")
        assert moved.classes == ["sushi"]
        with pytest.raises(PocketVisionError, match="no personal class 'pizza'"):
            moved.remove("pizza")
    # a file exported without --teachable is refused: test_a_teachable_export_carries_the_embedding_a_device_learns_on
