"""Bad input: one clear line on stderr, a non-zero exit, nothing half-written."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import one_line_error as _one_line_error
from helpers import run_cli


def _folder(root, layout):
    for rel, n in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (i * 20 % 255, 90, 30)).save(root / rel / f"{i}.jpg")
    return root




@pytest.mark.parametrize("layout,needles", [
    ({}, ("not found",)),
    ({"a": 4}, ("at least 2",)),
    ({"a": 4, "b": 0}, ("'b'", "no images")),
    ({"train/a": 4, "train/b": 4, "val/a": 2}, ("missing class 'b'",)),
])
def test_train_bad_data(tmp_path, layout, needles):
    root = _folder(tmp_path / "data", layout) if layout else tmp_path / "missing"
    r = run_cli("train", str(root), "--out", str(tmp_path / "x.pvb"), "--epochs", "1")
    _one_line_error(r, *needles)
    assert not (tmp_path / "x.pvb").exists()


def test_unknown_arch_lists_valid_ones(tmp_path):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    r = run_cli("train", str(root), "--arch", "deepdgo", "--out", str(tmp_path / "x.pvb"))
    _one_line_error(r, "deepdgo", "efficientnet_lite0", "Did you mean \"deepdog\"")


def test_image_size_the_arch_cannot_take(tmp_path):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    r = run_cli("train", str(root), "--arch", "deepdog", "--size", "16", "--out", str(tmp_path / "x.pvb"))
    _one_line_error(r, "deepdog")


def test_corrupt_bundle(tmp_path):
    p = tmp_path / "bad.pvb"
    p.write_bytes(b"PK\x03\x04garbage")
    _one_line_error(run_cli("predict", str(p), str(p)), "bad.pvb")
    _one_line_error(run_cli("export", str(tmp_path / "none.pvb")), "not found")


def test_bad_option_value(tmp_path):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    r = run_cli("train", str(root), "--epochs", "-3", "--out", str(tmp_path / "x.pvb"))
    _one_line_error(r, "epochs")


def test_help_explains_every_option_with_default():
    for verb in ("train", "eval", "predict", "export", "verify", "bench", "check", "info", "demo"):
        r = run_cli(verb, "--help")
        assert r.returncode == 0 and "usage: pocketvision " + verb in r.stdout
    r = run_cli("train", "--help")
    assert "(default: onecycle)" in r.stdout and "(default: top)" in r.stdout


def test_progressive_start_must_be_below_the_model_size(tmp_path):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    r = run_cli("train", str(root), "--arch", "deepdog", "--size", "64", "--progressive", "64", "--out",
                str(tmp_path / "x.pvb"))
    _one_line_error(r, "--progressive 64", "below the model's 64 px")
    assert not (tmp_path / "x.pvb").exists()
    # the run must end at the exported size (BatchNorm statistics), so the growth cannot take every epoch
    r = run_cli("train", str(root), "--arch", "deepdog", "--size", "64", "--progressive", "32", "--progressive-until",
                "1", "--out", str(tmp_path / "x.pvb"))
    _one_line_error(r, "progressive_until", "less than 1")


@pytest.mark.parametrize("argv,needles", [
    (["trian", "x"], ["invalid choice: 'trian'", 'Did you mean "train"']),
    (["train", "x", "--epcohs", "5"], ["unrecognized arguments: --epcohs 5", 'Did you mean "--epochs"']),
    (["train", "x", "--epoch", "5"], ["unrecognized arguments: --epoch 5", 'Did you mean "--epochs"']),  # no abbreviations
    (["train", "x", "--optimizer", "adamm"], ["invalid choice: 'adamm'", 'Did you mean "adamw"']),
])
def test_a_mistyped_verb_flag_or_choice_is_refused_with_a_suggestion(argv, needles):
    r = run_cli(*argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]  # argparse's line, after the verb's usage
    for n in needles:
        assert n in last, (n, last)


def test_an_unknown_export_target_names_the_flag_and_where_each_target_runs(tmp_path):
    r = run_cli("export", str(tmp_path / "m.pvb"), "--to", "tfjs")
    _one_line_error(r, "--to", "'tfjs'", "web: onnxruntime-web (WebAssembly, in a browser)")


def test_help_shows_verbs_by_group_and_no_placeholder_defaults():
    r = run_cli("--help")
    assert r.returncode == 0
    for group in ("the photos:", "make a model:", "ship it:", "over the air:"):
        assert group in r.stdout, group
    assert "PydanticUndefined" not in run_cli("stylize", "--help").stdout
    train = run_cli("train", "--help").stdout  # by purpose, then each task's own options under its name
    heads = ["what to train:", "how it learns:", "the photos:", "the machine:", "classify only (--task classify):",
             "keypoints only (--task keypoints):", "stylize only (--task stylize):"]
    assert all(h in train for h in heads) and train.index("  --top-views") > train.index("classify only")
    known = run_cli("train", "--task", "keypoints", "--help").stdout  # the task's own options first when it is known
    assert known.index("keypoints only") < known.index("how it learns:") < known.index("classify only")


def test_every_flag_of_every_verb_has_help_and_says_its_default_once():
    import argparse

    from pocketvision.cli.commands import build_parser
    from pocketvision.cli.common import _Fmt
    fmt, problems = _Fmt("pocketvision"), []
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for verb, sub in action.choices.items():
            for a in sub._actions:
                if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
                    continue
                text = fmt._expand_help(a) if a.help else ""
                if not text or text.count("(default:") > 1 or "PydanticUndefined" in text \
                        or "(default: None)" in text:
                    problems.append(f"{verb} {'/'.join(a.option_strings) or a.dest}: {text!r}")
    assert not problems, problems
