"""`pocketvision search`: the space and the evolution rule (fast, no data), then a real smoke search on real photos,
killed and resumed with nothing lost or repeated, and the same search as Ray tasks on a local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from helpers import one_line_error, run_cli
from pocketvision.errors import PocketVisionError
from pocketvision.models import build_model
from pocketvision.search.evolution import Evaluated, pareto_front, population_after, propose
from pocketvision.search.run import parse_budget
from pocketvision.search.space import MUTATIONS, key, mutate, random_candidate, valid

SMOKE = ["--budget", "4", "--population", "2", "--sample", "2", "--batch", "2", "--epochs", "1", "--batch-size", "32",
         "--max-latency-ms", "50", "--resolutions", "64,96", "--json"]


def test_candidates_build_and_every_mutation_keeps_them_valid():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        c = random_candidate(rng)
        assert valid(c)
        for _ in range(5):
            c, how = mutate(c, rng)
            assert valid(c)
            seen.add(how.split(" ")[0])
        net = build_model(c["arch"])
        side = c["resolution"]
        assert net(torch.zeros(1, 3, side, side)).shape == (1, 2)
    assert seen == set(MUTATIONS)  # every mutation of the papers happens


def test_the_rule_is_deterministic_and_ages_or_kills_the_worst():
    def ev(i, score):
        return Evaluated(round=i, slot=0, candidate={"i": i}, parent=None, mutation="random", score=score,
                         latency_ms=1.0 + i, size_mb=1.0, index=i)
    hist = [ev(0, 0.9), ev(1, 0.5), ev(2, 0.7), ev(3, 0.6)]
    assert [e.index for e in population_after(hist, 3, "aging", "constrained", None)] == [1, 2, 3]
    assert [e.index for e in population_after(hist, 3, "worst", "constrained", None)] == [0, 2, 3]
    real = [Evaluated(round=r, slot=s, candidate=random_candidate(np.random.default_rng([r, s])), parent=None,
                      mutation="random", score=0.5 + 0.01 * (2 * r + s), latency_ms=1.0, size_mb=1.0, index=2 * r + s)
            for r in range(3) for s in range(2)]
    kw = dict(seed=3, population=4, sample=2, rule="aging", objective="constrained", max_latency_ms=None)
    a, b = propose(real, 3, 2, **kw), propose(real, 3, 2, **kw)
    assert [key(c) for c, _, _ in a] == [key(c) for c, _, _ in b]  # the same history: the same round
    assert all(p is not None for _, p, _ in a)  # past the random population: children of the tournament
    assert [key(c) for c, _, _ in propose(real, 3, 1, **kw)] == [key(a[0][0])]  # a shorter round: its prefix
    # Pareto: the dominated one (lower score, slower) is out; an infeasible one never enters.
    front = pareto_front([ev(0, 0.9), ev(1, 0.8), Evaluated(**{**ev(2, 0.95).__dict__, "feasible": False})])
    assert [e.index for e in front] == [0]
    assert parse_budget("8h") == (None, 28800) and parse_budget("2h30m") == (None, 9000) and parse_budget("40") == \
        (40, None)
    with pytest.raises(PocketVisionError, match="a number of candidates"):
        parse_budget("soon")


@pytest.fixture(scope="module")
def photos(hotdog_few_train):
    """What the searches here train on: hotdog_small's 80 val photos with 48 training photos a class (a candidate's
    training and evaluation scale with the photos; its export and latency measurement do not)."""
    return hotdog_few_train


@pytest.fixture(scope="module")
def smoke(photos, tmp_path_factory):
    """An uninterrupted smoke search: 4 candidates (2 random, 2 children), one epoch each, then the final stage:
    the 2 best distinct networks and each scaled up to the limit, one epoch each, and the winner's bundle."""
    tmp = tmp_path_factory.mktemp("search")
    r = run_cli("search", str(photos), "--run-dir", str(tmp / "run"), "--out", str(tmp / "best.pvb"),
                "--final-epochs", "1", "--finalists", "2", "--scale-up", *SMOKE, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    # --json: the JSON alone on stdout; a line per candidate on stderr, with what is left of the budget
    assert "4/4, " in r.stderr and "about 0m00s left" in r.stderr and "final stage" in r.stderr, r.stderr[-2000:]
    return tmp, json.loads(r.stdout)


def _history(run_dir):
    return [(e["index"], e["mutation"], json.dumps(e["candidate"], sort_keys=True), round(e["score"], 6))
            for e in json.loads((run_dir / "history.json").read_text())]


@pytest.mark.shared_data
def test_smoke_search_writes_a_front_an_architecture_and_a_bundle(smoke, photos):
    tmp, summary = smoke
    run = tmp / "run"
    hist = json.loads((run / "history.json").read_text())
    assert [e["index"] for e in hist] == [0, 1, 2, 3] and [e["parent"] is None for e in hist] == [True, True,
                                                                                                 False, False]
    assert all(e["latency_ms"] > 0 and e["size_mb"] > 0 for e in hist)  # measured on real onnxruntime exports
    assert all(e["predicted_ms"] > 0 for e in hist) and summary["table_error_median"] < 1.0
    assert summary["pareto_front"] and summary["best"]["score"] > 0
    for name in ("history.csv", "pareto.json", "search.png", "arch.json", "latency_table.json", "trials.jsonl"):
        assert (run / name).stat().st_size > 0, name
    import pocketvision as pv
    b = pv.load(tmp / "best.pvb")
    assert b.meta["arch"]["name"] == "searched" and b.meta["lineage"][-1]["op"] == "search"
    # The final stage: the two best distinct networks, each also scaled up (measured within 95% of the 50 ms limit),
    # every one trained with the final budget; the bundle is the winner's and arch.json its architecture.
    finals = json.loads((run / "finals.json").read_text())
    plain = [f for f in finals["finalists"] if f["scaled"] is None]
    grown = [f for f in finals["finalists"] if f["scaled"]]
    assert len(plain) == 2 and len({f["from"] for f in plain}) == 2 and len(grown) == 2
    for g in grown:
        base = next(f for f in plain if f["from"] == g["from"])["candidate"]
        assert g["search_ms"] <= 0.95 * 50 and g["candidate"]["resolution"] >= base["resolution"]
        assert [x["out"] for x in g["candidate"]["arch"]["args"]["blocks"]] >= [x["out"] for x in base["arch"][
            "args"]["blocks"]] and g["candidate"] != base
    assert sorted(finals["runs"]) == [f"{i}/0" for i in range(4)]
    chosen = summary["final"]
    assert chosen["mean"] == max(f["mean"] for f in summary["finals"])
    assert b.meta["metrics"]["val_score"] == pytest.approx(chosen["score"])
    arch = json.loads((run / "arch.json").read_text())
    assert arch["arch"]["args"]["blocks"] == finals["finalists"][chosen["finalist"]]["candidate"]["arch"]["args"][
        "blocks"] and b.meta["contract"]["size"][0] == arch["resolution"]
    # The architecture file trains again, and `info` shows its blocks.
    r = run_cli("train", str(photos), "--arch", f"searched:{run / 'arch.json'}", "--epochs", "1", "--out",
                str(tmp / "again.pvb"), "--scratch", "--no-recipe", cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    arch = json.loads((run / "arch.json").read_text())
    assert pv.load(tmp / "again.pvb").meta["contract"]["size"] == [arch["resolution"]] * 2
    r = run_cli("info", f"searched:{run / 'arch.json'}")
    assert r.returncode == 0 and "blocks" in r.stdout, r.stderr


@pytest.mark.shared_data
def test_a_killed_search_resumes_with_nothing_lost_or_repeated(smoke, photos, tmp_path):
    """Two worker processes; the search is SIGKILLed right after its first evaluation is recorded, while the second
    is still training. The resumed search re-runs only that one and ends exactly where the uninterrupted one
    (one worker, in-process) ended."""
    env = {**os.environ, "POCKETVISION_SEARCH_KILL_AFTER": "1"}
    r = run_cli("search", str(photos), "--run-dir", str(tmp_path / "run"), "--workers", "2", *SMOKE,
                cwd=tmp_path, env=env)
    assert r.returncode == -9, r.stderr[-2000:]
    assert (tmp_path / "run" / "trials.jsonl").exists() and not (tmp_path / "run" / "history.json").exists()
    r = run_cli("search", "--resume", str(tmp_path / "run"), "--workers", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _history(tmp_path / "run") == _history(smoke[0] / "run")
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "run" / "trials.jsonl"))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1  # the one in flight, and only it, ran again
    one_line_error(run_cli("search", str(photos), "--resume", str(tmp_path / "nowhere")), "no search.json")


@pytest.mark.shared_data
def test_a_search_killed_in_its_final_stage_resumes_it(smoke, photos, tmp_path):
    """The finished smoke search without its final stage, resumed with --out: SIGKILLed right after the first final
    training is recorded, resumed again: the recorded one is not trained again, and every final score is the
    uninterrupted run's."""
    run = tmp_path / "run"
    shutil.copytree(smoke[0] / "run", run)
    (run / "finals.json").unlink()
    for d in (run / "candidates").glob("final-*"):
        shutil.rmtree(d)
    out = ["--out", str(tmp_path / "best.pvb"), "--json"]
    r = run_cli("search", "--resume", str(run), *out, cwd=tmp_path,
                env={**os.environ, "POCKETVISION_SEARCH_KILL_AFTER": "1"})
    assert r.returncode == -9, r.stderr[-2000:]
    first = json.loads((run / "finals.json").read_text())["runs"]
    assert len(first) == 1
    kept = next((run / "candidates").glob("final-*/model.pvb"))
    stamp = kept.stat().st_mtime_ns
    r = run_cli("search", "--resume", str(run), *out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kept.stat().st_mtime_ns == stamp  # not trained again
    def scores(d):
        return {k: v["score"] for k, v in json.loads((d / "finals.json").read_text())["runs"].items()}
    assert scores(run) == scores(smoke[0] / "run")
    assert json.loads(r.stdout)["final"]["finalist"] == smoke[1]["final"]["finalist"]


def test_the_final_stage_picks_distinct_networks_scales_them_and_judges_by_the_mean():
    from pocketvision.search.final import finalists, net_key, winner
    from pocketvision.search.space import scaled
    rng = np.random.default_rng(3)
    a, b = random_candidate(rng), random_candidate(rng)
    a_lr = {**a, "lr": a["lr"] * 2}  # the same network at another learning rate: the recipe sets the final one
    hist = [Evaluated(round=0, slot=i, candidate=c, parent=None, mutation="random", score=sc, latency_ms=1.0,
                      size_mb=1.0, feasible=f, index=i)
            for i, (c, sc, f) in enumerate(((a, 0.8, True), (a_lr, 0.9, True), (b, 0.7, True), (b, 0.95, False)))]
    top = finalists(hist, 3, "constrained", 2.0)
    assert [e.index for e in top] == [1, 2]  # a once (its best), b's infeasible evaluation never
    assert net_key(a) == net_key(a_lr) != net_key(b)
    big = scaled(a, 1.5, 224)
    assert big["resolution"] == 224 and big["arch"]["args"]["stem"] % 8 == 0
    assert all(x["out"] % 8 == 0 and x["out"] >= y["out"] for x, y in zip(big["arch"]["args"]["blocks"],
                                                                            a["arch"]["args"]["blocks"]))
    assert scaled(a, 1.0, a["resolution"]) == a and valid(big)
    runs = {"0/0": {"score": 0.75}, "0/1": {"score": 0.25}, "1/0": {"score": 0.625}, "1/1": {"score": 0.625}}
    assert winner([{}, {}], runs, [0, 1]) == 1  # the best mean, not the best single seed
    tie = {**runs, "1/0": {"score": 0.5}, "1/1": {"score": 0.5}}
    assert winner([{}, {}], tie, [0, 1]) == 0  # a tie: the fitter (earlier) one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.shared_data
def test_the_same_search_runs_on_a_local_ray_cluster(smoke, photos, tmp_path):
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    port = _free_port()
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_TMPDIR": short, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--include-dashboard", "false", "--object-store-memory", "100000000",
                            "--temp-dir", short, "--disable-usage-stats"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        r = run_cli("search", str(photos), "--run-dir", str(tmp_path / "run"), "--ray", f"127.0.0.1:{port}",
                    *SMOKE, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert _history(tmp_path / "run") == _history(smoke[0] / "run")  # the same candidates and scores
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(short, ignore_errors=True)


def test_bad_input_gets_one_line(hotdog_small, tmp_path):
    for args, words in ((["--budget", "soon"], "a number of candidates"),
                        (["--rule", "oldest"], "--rule oldest"),
                        (["--objective", "weighted"], "needs --max-latency-ms"),
                        (["--sample", "20"], "at most the population"),
                        (["--target", "coreml"], "--target coreml"),
                        (["--max-latency-ms", "0"], "must be above 0"),
                        (["--resolutions", "16"], "between 32 and 1024"),
                        (["--finalists", "0", "--out", "b.pvb"], "--finalists 0: at least 1"),
                        (["--scale-up", "--out", "b.pvb"], "--scale-up scales"),
                        (["--final-seeds", "2"], "add --out")):
        one_line_error(run_cli("search", str(hotdog_small), "--run-dir", str(tmp_path / words[:5]), *args), words)
    one_line_error(run_cli("search", str(tmp_path / "none")), "no such data folder")
    one_line_error(run_cli("train", str(hotdog_small), "--arch", f"searched:{tmp_path / 'x.json'}"),
                   "not a readable architecture JSON")


@pytest.mark.shared_data
def test_weight_inheritance_starts_children_from_their_parents(photos, tmp_path):
    from safetensors.torch import load as st_load

    from pocketvision.core import bundle_file as bundle_io
    from pocketvision.pipeline.train import inherit
    r = run_cli("search", str(photos), "--run-dir", str(tmp_path / "run"), "--inherit", *SMOKE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    children = [e for e in hist if e["parent"] is not None]
    assert children
    for e in children:
        child = next((tmp_path / "run" / "candidates").glob(f"{e['index']:04d}-trial*/model.pvb"))
        parent = next((tmp_path / "run" / "candidates").glob(f"{e['parent']:04d}-trial*/model.pvb"))
        assert bundle_io.read(child).meta["train_config"]["inherit_from"] == str(parent)
        # What inheritance copies: every tensor of the parent whose name and shape fit, the rest left fresh.
        net = build_model(e["candidate"]["arch"])
        fresh = {k: v.clone() for k, v in net.state_dict().items()}
        n, total = inherit(net, parent)
        theirs = st_load(bundle_io.read(parent).weights)
        fits = [k for k, v in fresh.items() if k in theirs and theirs[k].shape == v.shape]
        assert n == len(fits) > 0 and total == len(fresh)
        for k, v in net.state_dict().items():
            assert torch.equal(v, theirs[k] if k in fits else fresh[k]), k
    one_line_error(run_cli("train", str(photos), "--inherit-from", str(parent), "--init-from", str(parent),
                           "--epochs", "1"), "choose one")


def test_hand_designed_separable_networks_are_points_of_the_space():
    """deepdog (with BN after the depthwise conv) and MobileNetV1 convert to searched blocks that are the same network:
    the same tensors in the same order, and the same outputs once the weights are copied across."""
    from pocketvision.models.searched import as_searched
    for spec in ({"name": "deepdog", "args": {"alpha": 0.5, "dw_bn": True, "act": "elu", "num_classes": 2}},
                 {"name": "mobilenet_v1", "args": {"alpha": 0.25, "num_classes": 2}}):
        torch.manual_seed(0)
        theirs = build_model(spec).eval()
        ours = build_model({"name": "searched", "args": {**as_searched(spec), "num_classes": 2}}).eval()
        a, b = theirs.state_dict(), ours.state_dict()
        assert [v.shape for v in a.values()] == [v.shape for v in b.values()]
        ours.load_state_dict(dict(zip(b, a.values())))
        x = torch.randn(2, 3, 96, 96)
        assert torch.equal(theirs(x), ours(x)), spec["name"]
    with pytest.raises(PocketVisionError, match="no equivalent in the search space"):
        as_searched({"name": "deepdog", "args": {"dw_bn": False}})
    with pytest.raises(PocketVisionError, match="no equivalent in the search space"):
        as_searched({"name": "mobilenet_v2", "args": {}})


@pytest.mark.shared_data
def test_a_search_starts_from_the_users_own_network(photos, trained_bundle, tmp_path):
    """--start BUNDLE: the first candidate is the bundle's network at its input side, the rest of the first population
    are its mutants; the starting point is kept in search.json, so a resumed search proposes the same ones."""
    import pocketvision as pv
    from pocketvision.models.searched import as_searched
    b = pv.train(photos, out=tmp_path / "dd.pvb", arch="deepdog", arch_args={"alpha": 0.25, "dw_bn": True},
                 size=64, epochs=1, run_dir=tmp_path / "dd", progress=False, tensorboard=False, workers=0,
                 recipe=False)
    r = run_cli("search", str(photos), "--run-dir", str(tmp_path / "run"), "--start", str(b.path),
                "--budget", "3", "--population", "2", "--sample", "2", "--epochs", "1", "--resolutions", "64,96",
                "--max-latency-ms", "0.001", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist) == 3  # a budget that is not a multiple of --batch (2) ends with a shorter round
    assert hist[0]["mutation"] == "start" and hist[0]["candidate"]["resolution"] == 64
    assert hist[0]["candidate"]["arch"]["args"] == as_searched(b.meta["arch"])
    assert hist[1]["mutation"].startswith("start: ") and hist[1]["candidate"] != hist[0]["candidate"]
    # Far over an impossible limit: the given network is still trained and measured (the point to beat), its mutant
    # is judged by the block table alone and not trained.
    assert hist[0]["skipped"] is None and hist[0]["score"] > 0 and hist[0]["latency_ms"] > 0
    assert not hist[0]["feasible"] and hist[1]["skipped"].startswith("predicted")
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["start"] == [hist[0]["candidate"]]
    # The Keras-style deepdog (nothing between depthwise and pointwise) is not in the space: one line, nothing run.
    one_line_error(run_cli("search", str(photos), "--run-dir", str(tmp_path / "bad"), "--start",
                           str(trained_bundle)), "no equivalent in the search space")
    one_line_error(run_cli("search", str(photos), "--run-dir", str(tmp_path / "bad2"), "--start",
                           str(tmp_path / "none.pvb")), "--start")
