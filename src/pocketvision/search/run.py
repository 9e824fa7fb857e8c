"""`pocketvision search`: evolve an architecture for the user's data under the user's device budget.

    pocketvision search DATA --target onnx --max-latency-ms 2 [--max-size-mb 1] --budget 8h|40
                         [--workers N | --ray ADDRESS] [--resume RUN_DIR] [--out best.pvb] [--json]

Trials live in Optuna (a journal file in the run folder, one record per evaluation, written when the evaluation
ends): that is the checkpoint. Killed, `--resume RUN_DIR` marks what was in flight as failed, replays the
history and proposes exactly the candidates the uninterrupted search would have (evolution.py), so nothing that
finished is lost or run twice. Candidates are evaluated in this process (one worker), in local worker processes
(``--workers N``), or as Ray tasks on a cluster (``--ray ADDRESS``); each trains with one torch thread and a fixed
seed, so the result does not depend on where it ran. At the end: history.json/.csv, pareto.json, arch.json and
search.png; with ``--out``, the final stage (final.py) trains the best distinct architectures with the final budget
on the same workers and writes the winner as a bundle. With ``inherit`` a child starts from its parent's trained
bundle wherever a tensor's name and shape match.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..errors import PocketVisionError
from ..models.searched import as_searched, load_searched
from .evolution import OBJECTIVES, RULES, Evaluated, fitness, pareto_front, propose
from .latency import PREDICT_CUTOFF, BlockTable, exclusive, measure_export, timed_target
from .space import LRS, MAX_BLOCKS, RESOLUTIONS, describe, valid

TABLE_TARGET = "onnx"  # the block table times onnxruntime; other targets are judged on their exports only


def parse_budget(text: str | int) -> tuple[int | None, float | None]:
    """``40`` -> 40 candidates; ``8h``, ``90m``, ``2h30m``, ``600s`` -> seconds."""
    if isinstance(text, int) or str(text).isdigit():
        n = int(text)
        if n < 1:
            raise PocketVisionError(f"--budget {text}: at least 1 candidate.")
        return n, None
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", str(text).strip())
    if not m or not any(m.groups()):
        raise PocketVisionError(f"--budget {text!r}: a number of candidates (40) or a time (8h, 90m, 2h30m, 600s).")
    h, mi, s = (float(g or 0) for g in m.groups())
    return None, h * 3600 + mi * 60 + s


def evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Train one candidate briefly and time its export: runs in a worker process or a Ray task."""
    import torch
    from rich.console import Console

    from ..api import train
    torch.set_num_threads(1)  # every candidate trains the same way wherever it runs: the same numbers
    t0 = time.perf_counter()
    c, run_dir = job["candidate"], Path(job["run_dir"])
    lock = run_dir / "latency.lock"
    predicted = None
    if job["target"] == TABLE_TARGET and job["precision"] == "fp32":
        predicted = BlockTable(Path(job["table"]), lock).predict(c, num_classes=2)
        # A network the user started from is always trained and measured: it is the point to beat, and the table's
        # guess (blocks timed one by one) must not throw it away.
        if job["max_latency_ms"] and predicted > PREDICT_CUTOFF * job["max_latency_ms"] and not job.get("given"):
            return {"score": float("nan"), "latency_ms": None, "size_mb": None, "predicted_ms": predicted,
                    "skipped": f"predicted {predicted:.2f} ms", "seconds": time.perf_counter() - t0}
    # One folder per attempt (the trial number): a worker orphaned by a killed search may still be finishing the
    # previous attempt of this candidate.
    where = run_dir / "candidates" / job["attempt"]
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    if job.get("final"):
        # A finalist trains as a user's `train --arch searched:arch.json --scratch` would: with the task's
        # from-scratch recipe (optimiser, schedule, EMA, augmentation, epochs for the data's size), the same budget
        # a hand-designed network gets; --final-epochs overrides the recipe's epochs.
        budget: dict[str, Any] = {"recipe": True} | ({"epochs": job["epochs"]} if job["epochs"] else {})
    else:  # a candidate: a short run at its own learning rate, nothing else that varies
        budget = {"recipe": False, "epochs": job["epochs"], "lr": c["lr"], "batch_size": job["batch_size"]}
        if job.get("inherit_from"):  # --inherit: the parent's trained tensors where name and shape match
            budget["inherit_from"] = job["inherit_from"]
    b = train(job["data"], out=where / "model.pvb", arch="searched", arch_args=c["arch"]["args"],
              size=c["resolution"], seed=job["seed"], pretrained=False, workers=0, progress=False,
              tensorboard=False, run_dir=where / "run", console=Console(file=io.StringIO()),
              **budget, **job["train_options"])
    score = b.meta["metrics"].get("val_score")
    if score is None:
        raise PocketVisionError(f"candidate {job['index']}: training gave no validation score.")
    ms, mb = _measured(b, c, job, where, lock)
    return {"score": float(score), "latency_ms": ms, "size_mb": mb, "predicted_ms": predicted, "skipped": None,
            "seconds": time.perf_counter() - t0}


def _measured(b, c: dict[str, Any], job: dict[str, Any], where: Path, lock: Path) -> tuple[float, float]:
    """(ms, MB) of the candidate's export. Latency and size depend on the network and input side, not on the
    weights or the learning rate: the first measurement of a network is kept (``latency_memo.json``) and reused,
    so that identity and learning-rate mutations are judged against the same number instead of a new noisy one."""
    memo = Path(job["run_dir"]) / "latency_memo.json"
    net = json.dumps([c["arch"], c["resolution"], job["target"], job["precision"]], sort_keys=True)
    with exclusive(lock):
        known = json.loads(memo.read_text()) if memo.exists() else {}
    if net in known and not job.get("final"):
        return tuple(known[net])
    ms, mb = measure_export(b, job["target"], job["precision"], where, lock)
    with exclusive(lock):
        known = json.loads(memo.read_text()) if memo.exists() else {}
        known.setdefault(net, [ms, mb])
        _atomic(memo, json.dumps(known))
    return tuple(known[net]) if not job.get("final") else (ms, mb)


class _Local:
    """Evaluations in this process (one worker) or a pool of spawned processes."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_follow_parent, initargs=(os.getpid(),))

    def run(self, jobs: list[dict[str, Any]]):
        """Yield (job, result) as they finish."""
        if self.pool is None:
            for j in jobs:
                yield j, evaluate(j)
            return
        from concurrent.futures import as_completed
        futures = {self.pool.submit(evaluate, j): j for j in jobs}
        for f in as_completed(futures):
            yield futures[f], f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _follow_parent(parent: int) -> None:
    """In each worker: exit when the search process is gone (killed), instead of training for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class _Ray:
    """Evaluations as Ray tasks (one CPU each) on the cluster at ``address``."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise PocketVisionError("--ray needs Ray: pip install 'pocketvision[search]'.") from None
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise PocketVisionError(f"--ray {address}: cannot connect ({str(e).splitlines()[0]}); start the "
                                    "cluster with `ray start --head`.") from None
        self.ray = ray
        self.remote = ray.remote(num_cpus=1, max_retries=0)(evaluate)

    def run(self, jobs: list[dict[str, Any]]):
        refs = {self.remote.remote(j): j for j in jobs}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield refs[done[0]], self.ray.get(done[0])

    def close(self) -> None:
        self.ray.shutdown()


def _study(run_dir: Path):
    try:
        import optuna
    except ImportError:
        raise PocketVisionError("search keeps its trials in Optuna: pip install 'pocketvision[search]'.") from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run_dir / "trials.jsonl")))
    return optuna.create_study(study_name="search", storage=storage, directions=["maximize", "minimize"],
                               load_if_exists=True)


def _history(study) -> list[Evaluated]:
    from optuna.trial import TrialState
    out = [Evaluated(**t.user_attrs["record"]) for t in study.get_trials(deepcopy=False,
                                                                          states=(TrialState.COMPLETE,
                                                                                  TrialState.PRUNED))]
    return sorted(out, key=lambda e: e.index)


def _resumed(run_dir: Path, data: str | Path | None) -> tuple[dict[str, Any], Path]:
    """The settings a search in ``run_dir`` started with (``--resume``)."""
    try:
        saved = json.loads((run_dir / "search.json").read_text())
    except (OSError, ValueError):
        raise PocketVisionError(f"--resume {run_dir}: no search.json there (not a search run folder).") from None
    if data is not None and Path(data).resolve() != Path(saved["data"]):
        raise PocketVisionError(f"--resume {run_dir}: that search ran on {saved['data']}, not {data}.")
    return saved, run_dir


def _started(run_dir: str | Path | None, out, start: list[str | Path] | None, settings: dict[str, Any]
             ) -> tuple[dict[str, Any], Path]:
    """A new search's settings, checked and written to its run folder (``search.json``) -> (settings, folder)."""
    _check(settings)
    if out is None and (settings["finalists"] != 1 or settings["final_seeds"] != 1 or settings["scale_up"]):
        raise PocketVisionError("--finalists, --final-seeds and --scale-up choose the final bundle: add --out "
                                "best.pvb (without it the search only writes arch.json and the history).")
    # Kept as candidates in search.json, so a resumed search proposes the same first population.
    settings["start"] = [start_candidate(p, settings["resolutions"]) for p in start or []]
    run_dir = Path(run_dir or Path("runs") / f"search-{datetime.now():%Y%m%d-%H%M%S}")
    if (run_dir / "search.json").exists():
        raise PocketVisionError(f"{run_dir}: a search ran there already; --resume it or choose another folder.")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "search.json").write_text(json.dumps(settings, indent=1))
    return settings, run_dir


def _recorded(study, asked: tuple, job: dict[str, Any], res: dict[str, Any], rnd: int, s: dict[str, Any]) -> Evaluated:
    """One finished evaluation -> its record, told to the study (a skipped one as pruned)."""
    from optuna.trial import TrialState
    trial, slot, parent, how = asked
    e = Evaluated(round=rnd, slot=slot, candidate=job["candidate"], parent=parent, mutation=how,
                  score=res["score"], latency_ms=res["latency_ms"], size_mb=res["size_mb"],
                  predicted_ms=res["predicted_ms"], skipped=res["skipped"], seconds=round(res["seconds"], 2),
                  index=job["index"])
    e.feasible = res["skipped"] is None and (s["max_latency_ms"] is None or e.latency_ms <= s["max_latency_ms"]) \
        and (s["max_size_mb"] is None or e.size_mb <= s["max_size_mb"])
    if e.skipped:
        e.score = -1.0  # never a parent: its prediction alone broke the limit
    trial.set_user_attr("record", dataclasses.asdict(e))
    if e.skipped:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, [e.score, e.latency_ms])
    return e


def _reopened(run_dir: Path):
    """The run's Optuna study and what it evaluated; trials in flight when the search was killed are failed, so
    they are evaluated again -> (study, history)."""
    from optuna.trial import TrialState
    study = _study(run_dir)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    return study, _history(study)


def search(data: str | Path | None = None, *, target: str = "onnx", precision: str = "fp32",
           max_latency_ms: float | None = None, max_size_mb: float | None = None, budget: str | int = "8h",
           workers: int = 1, ray: str | None = None, resume: str | Path | None = None, out: str | Path | None = None,
           run_dir: str | Path | None = None, population: int = 12, sample: int = 4, batch: int = 2,
           rule: str = "aging", objective: str = "constrained", epochs: int = 3, final_epochs: int | None = None,
           batch_size: int = 32, seed: int = 0, latency_table: str | Path | None = None,
           resolutions: tuple[int, ...] | list[int] = RESOLUTIONS, inherit: bool = False,
           start: list[str | Path] | None = None, train_options: dict[str, Any] | None = None,
           finalists: int = 1, final_seeds: int = 1, scale_up: bool = False,
           log: Callable[[str], None] = lambda s: None
           ) -> dict[str, Any]:
    """Evolve, write the outputs; with ``out``, train the ``finalists`` best distinct architectures (and, with
    ``scale_up``, each scaled up to the limit) with the final budget for ``final_seeds`` seeds and write the best
    mean's bundle (final.py); -> the summary."""
    if resume is not None:
        s, run_dir = _resumed(Path(resume), data)
    else:
        if data is None or not Path(data).exists():
            raise PocketVisionError(f"{data}: no such data folder.")
        s, run_dir = _started(run_dir, out, start, {
            "data": str(Path(data).resolve()), "target": target, "precision": precision,
            "max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb, "budget": str(budget),
            "population": population, "sample": sample, "batch": batch, "rule": rule, "objective": objective,
            "epochs": epochs, "final_epochs": final_epochs, "batch_size": batch_size, "seed": seed,
            "resolutions": sorted({int(r) for r in resolutions}), "inherit": bool(inherit),
            "train_options": dict(train_options or {}), "finalists": finalists, "final_seeds": final_seeds,
            "scale_up": bool(scale_up)})
    count, seconds = parse_budget(s["budget"])
    table = Path(latency_table) if latency_table else run_dir / "latency_table.json"
    study, history = _reopened(run_dir)
    elapsed = float(study.user_attrs.get("elapsed_s", 0.0))
    log(f"resuming {run_dir}: {len(history)} evaluations done, {elapsed:.0f} s spent" if history else
        f"searching ({s['budget']}) in {run_dir}: a line per candidate trained and timed, with the time left")
    pool = _Ray(ray) if ray else _Local(workers)
    killer = _Killer()
    try:
        while True:
            if (count is not None and len(history) >= count) or (seconds is not None and elapsed >= seconds):
                break
            done = {(e.round, e.slot) for e in history}
            rnd = next(r for r in range(10**6) if any((r, k) not in done for k in range(s["batch"])))
            # A budget that is not a multiple of --batch ends with a shorter round.
            slots = s["batch"] if count is None else min(s["batch"], count - rnd * s["batch"])
            before = [e for e in history if e.round < rnd]
            proposals = propose(before, rnd, slots, seed=s["seed"], population=s["population"], sample=s["sample"],
                                rule=s["rule"], objective=s["objective"], max_latency_ms=s["max_latency_ms"],
                                resolutions=tuple(s["resolutions"]), starts=s.get("start"))
            jobs, trials = [], {}
            for slot, (cand, parent, how) in enumerate(proposals):
                if (rnd, slot) in done:
                    continue
                index = rnd * s["batch"] + slot
                trial = study.ask()
                trials[index] = (trial, slot, parent, how)
                # Each candidate trains with its own seed (seed + index): an identity mutation then measures the
                # training noise, as in the papers, and the number is the same wherever the candidate runs.
                jobs.append({"candidate": cand, "index": index, "attempt": f"{index:04d}-trial{trial.number}",
                             "data": s["data"], "epochs": s["epochs"],
                             "batch_size": s["batch_size"], "seed": s["seed"] + index, "target": s["target"],
                             "precision": s["precision"], "max_latency_ms": s["max_latency_ms"],
                             "run_dir": str(run_dir), "table": str(table), "train_options": s["train_options"],
                             "given": how == "start",
                             "inherit_from": _bundle_of(run_dir, parent) if s.get("inherit") else None})
            t_round = time.perf_counter()
            for job, res in pool.run(jobs):
                e = _recorded(study, trials[job["index"]], job, res, rnd, s)
                elapsed += time.perf_counter() - t_round
                t_round = time.perf_counter()
                study.set_user_attr("elapsed_s", elapsed)
                history.append(e)
                history.sort(key=lambda x: x.index)
                log(_evaluated_line(e, time_left(len(history), count, seconds, elapsed)))
                killer.tick()
        return _finish(run_dir, s, history, out, table, pool, killer, log)
    finally:
        pool.close()


def _evaluated_line(e, left: str) -> str:
    shown = (f"skipped ({e.skipped})" if e.skipped else f"score {e.score:.4f}  {e.latency_ms:.2f} ms  "
             f"{e.size_mb:.2f} MB{'' if e.feasible else '  (over the limit)'}")
    return f"[{e.index:3d}] {e.mutation:<16} {shown}  {describe(e.candidate)}  ({left})"


def time_left(done: int, count: int | None, seconds: float | None, elapsed: float) -> str:
    """'3/40, 2m10s so far, about 26m left': a count's estimate from the mean so far; a time budget's own clock."""
    def hms(s: float) -> str:
        s = max(0, int(s))
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
    if count is not None:
        left = elapsed / max(done, 1) * max(count - done, 0)
        return f"{done}/{count}, {hms(elapsed)} so far, about {hms(left)} left"
    return f"{done} done, {hms(elapsed)} of {hms(seconds or 0)}"


class _Killer:
    """Tests: SIGKILL this search after POCKETVISION_SEARCH_KILL_AFTER recorded results (evaluations and final
    trainings), a known point rather than a race with a timer."""

    def __init__(self) -> None:
        self.after, self.told = int(os.environ.get("POCKETVISION_SEARCH_KILL_AFTER", "0")), 0

    def tick(self) -> None:
        self.told += 1
        if self.after and self.told >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def _bundle_of(run_dir: Path, index: int | None) -> str | None:
    """The trained bundle of evaluation ``index`` (its last attempt), or None (a random candidate has no parent)."""
    if index is None:
        return None
    found = sorted((run_dir / "candidates").glob(f"{index:04d}-trial*/model.pvb"),
                   key=lambda p: int(p.parent.name.split("trial")[1]))
    return str(found[-1]) if found else None


def start_candidate(path: str | Path, resolutions: list[int]) -> dict[str, Any]:
    """``--start``: a candidate with the architecture and input side of a trained bundle (.pvb) whose network the
    search space can express (its own, deepdog or MobileNetV1 with BN after the depthwise conv), or of an
    architecture JSON (what a search wrote); it trains at the middle learning rate of the space."""
    p = Path(path)
    if not p.is_file():
        raise PocketVisionError(f"--start {path}: no such file; give a trained bundle (.pvb) or an arch.json.")
    if p.suffix == ".pvb":
        from ..core.bundle_file import read
        meta = read(p).meta
        args, side = as_searched(meta["arch"]), int(meta["contract"]["size"][0])
    else:
        args, side = load_searched(str(p))
        side = side or resolutions[len(resolutions) // 2]
    c = {"arch": {"name": "searched", "args": args}, "resolution": side, "lr": LRS[len(LRS) // 2]}
    if not valid(c):
        raise PocketVisionError(f"--start {path}: outside the search space (1-{MAX_BLOCKS} blocks, at least 2 px "
                                "left after the last stride).")
    return c


def _check(s: dict[str, Any]) -> None:
    if s["rule"] not in RULES:
        raise PocketVisionError(f"--rule {s['rule']}: one of {', '.join(RULES)}.")
    if s["objective"] not in OBJECTIVES:
        raise PocketVisionError(f"--objective {s['objective']}: one of {', '.join(OBJECTIVES)}.")
    if s["objective"] == "weighted" and not s["max_latency_ms"]:
        raise PocketVisionError("--objective weighted needs --max-latency-ms (the latency it weighs against).")
    if s["scale_up"] and not s["max_latency_ms"]:
        raise PocketVisionError("--scale-up scales the finalists up to --max-latency-ms: give that limit.")
    for k, lo in (("population", 2), ("sample", 1), ("batch", 1), ("epochs", 1), ("final_epochs", 1),
                  ("finalists", 1), ("final_seeds", 1)):
        if k == "final_epochs" and s[k] is None:  # the recipe's
            continue
        if not isinstance(s[k], int) or s[k] < lo:
            raise PocketVisionError(f"--{k.replace('_', '-')} {s[k]}: at least {lo}.")
    if s["sample"] > s["population"]:
        raise PocketVisionError(f"--sample {s['sample']}: at most the population ({s['population']}).")
    for k in ("max_latency_ms", "max_size_mb"):
        if s[k] is not None and not s[k] > 0:
            raise PocketVisionError(f"--{k.replace('_', '-')} {s[k]}: must be above 0.")
    parse_budget(s["budget"])
    if not s["resolutions"] or not all(32 <= r <= 1024 for r in s["resolutions"]):
        raise PocketVisionError(f"--resolutions {s['resolutions']}: input sides between 32 and 1024.")
    timed_target(s["target"])


def _finish(run_dir: Path, s: dict[str, Any], history: list[Evaluated], out, table: Path, pool, killer: _Killer,
            log: Callable[[str], None]) -> dict[str, Any]:
    rows = [dataclasses.asdict(e) for e in history]
    _atomic(run_dir / "history.json", json.dumps(rows, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "round", "slot", "parent", "mutation", "score", "latency_ms", "predicted_ms", "size_mb",
                "feasible", "skipped", "seconds", "resolution", "architecture"])
    for e in history:
        w.writerow([e.index, e.round, e.slot, e.parent, e.mutation, e.score, e.latency_ms, e.predicted_ms, e.size_mb,
                    e.feasible, e.skipped or "", e.seconds, e.candidate["resolution"], describe(e.candidate)])
    _atomic(run_dir / "history.csv", buf.getvalue())
    front = pareto_front(history)
    _atomic(run_dir / "pareto.json", json.dumps([dataclasses.asdict(e) for e in front], indent=1))
    errors = [abs(e.predicted_ms - e.latency_ms) / e.latency_ms for e in history
              if e.predicted_ms and e.latency_ms and e.skipped is None]
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "evaluations": len(history), "feasible": sum(e.feasible for e in history),
        "skipped_by_table": sum(e.skipped is not None for e in history),
        "table_error_median": float(sorted(errors)[len(errors) // 2]) if errors else None,
        "pareto_front": [{"index": e.index, "score": e.score, "latency_ms": e.latency_ms, "size_mb": e.size_mb,
                          "architecture": describe(e.candidate)} for e in front]}
    _plot(history, pareto_front(history, with_size=False), s, run_dir / "search.png")
    feasible = [e for e in history if e.feasible and e.skipped is None]
    if not feasible:
        log("no candidate met the limits; the history and the plot say how close they came")
        summary["best"] = None
        return summary
    best = max(feasible, key=lambda e: (fitness(e, s["objective"], s["max_latency_ms"]), -e.index))
    _atomic(run_dir / "arch.json", json.dumps({**best.candidate, "search": {
        "index": best.index, "score": best.score, "latency_ms": best.latency_ms, "size_mb": best.size_mb,
        "target": s["target"], "precision": s["precision"]}}, indent=1))
    summary["best"] = {"index": best.index, "score": best.score, "latency_ms": best.latency_ms,
                       "size_mb": best.size_mb, "architecture": describe(best.candidate),
                       "arch_file": str(run_dir / "arch.json")}
    if out is not None:
        summary["finals"], summary["final"] = _final_stage(run_dir, s, history, out, table, pool, killer, log)
    _atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def _final_stage(run_dir: Path, s: dict[str, Any], history: list[Evaluated], out, table: Path, pool,
                 killer: _Killer, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the finalists (final.py) with the final budget and seeds on the search's workers, keep each result
    in finals.json as it ends, write the best mean's bundle to ``out`` and its architecture to arch.json."""
    from .final import plan, run_key, winner
    path = run_dir / "finals.json"
    state = json.loads(path.read_text()) if path.exists() else None
    if state is None:
        state = {"finalists": plan(history, s, run_dir, table, _bundle_of, log), "runs": {}}
        _atomic(path, json.dumps(state, indent=1))
    finals, runs = state["finalists"], state["runs"]
    seeds = [s["seed"] + i for i in range(s.get("final_seeds", 1))]
    jobs = [{"candidate": f["candidate"], "index": f["from"], "finalist": i, "attempt": f"final-{i}-seed{sd}",
             "data": s["data"], "epochs": s["final_epochs"], "final": True, "batch_size": s["batch_size"],
             "seed": sd, "target": s["target"], "precision": s["precision"], "max_latency_ms": None,
             "run_dir": str(run_dir), "table": str(table), "train_options": s["train_options"]}
            for i, f in enumerate(finals) for sd in seeds if run_key(i, sd) not in runs]
    log(f"final stage: {len(finals)} finalist(s) x {len(seeds)} seed(s) with the from-scratch recipe"
        + (f", {s['final_epochs']} epochs" if s["final_epochs"] else "") + f"; {len(jobs)} training(s) to run")
    for job, res in pool.run(jobs):
        runs[run_key(job["finalist"], job["seed"])] = {k: res[k] for k in ("score", "latency_ms", "size_mb",
                                                                            "seconds")}
        _atomic(path, json.dumps(state, indent=1))
        log(f"  finalist {job['finalist']} seed {job['seed']}: score {res['score']:.4f}  {res['latency_ms']:.2f} ms  "
            f"{describe(job['candidate'])}")
        killer.tick()
    table_rows = []
    for i, f in enumerate(finals):
        scores = [runs[run_key(i, sd)]["score"] for sd in seeds]
        first = runs[run_key(i, seeds[0])]
        table_rows.append({"finalist": i, "from": f["from"], "scaled": f["scaled"], "architecture": f["architecture"],
                           "search_score": f["search_score"], "scores": scores, "mean": sum(scores) / len(scores),
                           "latency_ms": first["latency_ms"], "size_mb": first["size_mb"],
                           "file": str(next((run_dir / "candidates" / f"final-{i}-seed{seeds[0]}")
                                                    .glob("candidate.*"), ""))})
    w = winner(finals, runs, seeds)
    chosen = table_rows[w]
    from ..api import load
    b = load(run_dir / "candidates" / f"final-{w}-seed{seeds[0]}" / "model.pvb")
    b.meta.setdefault("lineage", []).append({"op": "search", "run_dir": str(run_dir), "index": chosen["from"],
                                             "scaled": chosen["scaled"], "final_scores": chosen["scores"]})
    b.save(out)
    _atomic(run_dir / "arch.json", json.dumps({**finals[w]["candidate"], "search": {
        "index": chosen["from"], "scaled": chosen["scaled"], "final_scores": chosen["scores"],
        "final_mean": chosen["mean"], "latency_ms": chosen["latency_ms"], "size_mb": chosen["size_mb"],
        "target": s["target"], "precision": s["precision"]}}, indent=1))
    return table_rows, {"bundle": str(out), "finalist": w, "score": chosen["scores"][0], "mean": chosen["mean"],
                        "scores": chosen["scores"], "latency_ms": chosen["latency_ms"], "size_mb": chosen["size_mb"],
                        "architecture": chosen["architecture"]}


def _plot(history: list[Evaluated], front: list[Evaluated], s: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure
    pts = [e for e in history if e.skipped is None and e.latency_ms is not None]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if pts:
        sc = ax.scatter([e.latency_ms for e in pts], [e.score for e in pts], c=[e.index for e in pts], cmap="viridis",
                        s=22, edgecolors=["none" if e.feasible else "red" for e in pts])
        fig.colorbar(sc, ax=ax, label="evaluation (time)")
    if front:
        ax.step([e.latency_ms for e in front], [e.score for e in front], where="post", color="black", lw=1.2,
                label="Pareto front")
        ax.legend(loc="lower right")
    if s["max_latency_ms"]:
        ax.axvline(s["max_latency_ms"], color="red", ls="--", lw=1)
    ax.set_xlabel(f"measured latency, {s['target']} {s['precision']}, 1 thread (ms)")
    ax.set_ylabel("validation score")
    ax.set_title("architecture search: accuracy against latency")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic(path, buf.getvalue())


def _atomic(path: Path, data: str | bytes) -> None:
    from ..core.bundle_file import atomic_write_bytes
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


__all__ = ["evaluate", "parse_budget", "search"]
