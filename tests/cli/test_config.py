"""`--config FILE`: every run writes its whole configuration, the file alone repeats the run, flags override it,
and a bad file gets one line naming the file and the key."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import one_line_error, run_cli

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

FLAGS = ("--arch", "deepdog", "--arch-args", "alpha=0.25", "--scratch", "--size", "64", "--epochs", "1",
         "--seed", "3", "--workers", "0", "--no-tensorboard", "--json")


def _meta(bundle: Path) -> tuple[dict, bytes]:
    with zipfile.ZipFile(bundle) as z:
        return json.loads(z.read("bundle.json")), z.read("weights.safetensors")


def test_the_written_config_repeats_the_run_and_flags_override_it(hotdog_small, tmp_path):
    r = run_cli("train", str(hotdog_small), *FLAGS, "--run-dir", str(tmp_path / "run1"), "--out",
                str(tmp_path / "a.pvb"))
    assert r.returncode == 0, r.stderr
    config = tmp_path / "run1" / "config.yaml"
    assert f"config:{config}" in "".join(r.stderr.split())  # the console wraps long lines anywhere
    written = yaml.safe_load(config.read_text())
    assert written["data"] == str(hotdog_small.resolve()) and written["epochs"] == 1 and written["seed"] == 3
    assert written["arch"] == "deepdog" and written["arch_args"]["alpha"] == 0.25 and written["recipe"] is False

    # The file alone: no DATA, no flags but where to write. The same options and, on a CPU, the same weights.
    r = run_cli("train", "--config", str(config), "--run-dir", str(tmp_path / "run2"), "--out", str(tmp_path / "b.pvb"),
                "--json")
    assert r.returncode == 0, r.stderr
    (ma, wa), (mb, wb) = _meta(tmp_path / "a.pvb"), _meta(tmp_path / "b.pvb")
    same = {k: v for k, v in ma["train_config"].items() if k not in ("run_dir", "recipe", "lr_reference_batch")}
    assert {k: mb["train_config"][k] for k in same} == same
    assert wa == wb

    # A flag on the command line wins over the file; the file's other options stay.
    r = run_cli("train", "--config", str(config), "--epochs", "2", "--run-dir", str(tmp_path / "run3"), "--out",
                str(tmp_path / "c.pvb"), "--json")
    assert r.returncode == 0, r.stderr
    mc, _ = _meta(tmp_path / "c.pvb")
    assert mc["train_config"]["epochs"] == 2 and mc["train_config"]["seed"] == 3 and mc["arch"]["name"] == "deepdog"


@pytest.mark.parametrize("text, needles", [
    ("epcohs: 5\n", ["'epcohs' is not an option of `pocketvision train`", 'Did you mean "epochs"']),
    ("epochs: five\n", ["epochs", "'five'"]),
    ("schedule: stepwise\n", ["schedule", "choose from"]),
    ("- epochs\n- 5\n", ["a mapping of option names to values"]),
    ("a: &x [1, 2]\nb: *x\n", ["aliases"]),
    ("epochs: [unclosed\n", ["not YAML or JSON"]),
])
def test_a_bad_config_file_gets_one_line_naming_it(tmp_path, text, needles):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    one_line_error(run_cli("train", str(tmp_path), "--config", str(f)), str(f), *needles)


def test_export_reads_its_options_from_a_file_too(trained_bundle, tmp_path):
    f = tmp_path / "export.yaml"
    f.write_text(yaml.safe_dump({"to": ["onnx"], "out": str(tmp_path / "m.onnx"), "no_verify": False}))
    r = run_cli("export", str(trained_bundle), "--config", str(f), "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.onnx").is_file()
