"""Classification benchmarks, with the peer measured in the same run.

    python benchmarks/bench_classify.py --parts train,export,e2e,cli,ultralytics [--data DIR] [--out DIR]
    python benchmarks/bench_classify.py --device cuda --parts deepdog,ceiling,throughput,ultralytics  # on a GPU

Prints a markdown table per part with the machine and the command, and writes benchmarks/out/*.json.
Parts:
  train        efficientnet_lite0 (default fine-tune and --linear-probe), deepdog alpha=0.5 from
               scratch (defaults, and the recipe below) and distilled from the efficientnet bundle:
               wall time, val accuracy, img/s
  deepdog      only the from-scratch deepdog recipe (DEEPDOG_RECIPE); run it with `ultralytics` for
               the side-by-side: --parts deepdog,ultralytics
  ceiling      the same recipe for 300 epochs: is DeepDog's accuracy limited by the 10-minute budget or by the
               network and data? (hours on 2 cores; minutes on a GPU)
  throughput   training img/s at 224 px through the real pipeline (deepdog, efficientnet_lite0 full)
  export       exported-ONNX latency p50 at batch 1, 1 thread: deepdog alpha 0.5/1 (ELU and ReLU)
  e2e          JPEG bytes -> label on the ~500 px val photos and the 12 MP photos-fullres
  cli          `pocketvision predict model.onnx photo.jpg` wall time from process start (median of 5)
  ultralytics  yolo11n-cls from scratch, 15 epochs, in its own venv (created on first use:
               torch==2.14.1 torchvision==0.29.1 ultralytics litert-torch), its ONNX latency and predict API time;
               PV_ULTRALYTICS_PYTHON names another interpreter that has ultralytics (e.g. on a GPU machine)
--device       passed to every training run (ours and the peer's): auto, cpu, cuda
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("POCKETVISION_DATA", HERE.parents[1] / "shared" / "data"))
UL_VENV = Path(os.environ.get("PV_ULTRALYTICS_VENV", "/opt/pv-peers/ultralytics"))
DEVICE = "auto"  # --device: every training run, ours and the peer's


def sh(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t, r


def pv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pocketvision", *args]


def _gpu() -> str:
    if DEVICE == "cpu":
        return ""
    r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True) \
        if shutil.which("nvidia-smi") else None
    return f", GPU {r.stdout.strip()}" if r and r.returncode == 0 and r.stdout.strip() else ""


def table(title: str, header: list[str], rows: list[list]) -> str:
    from pocketvision.deploy.bench import machine
    lines = [f"### {title}", "", f"machine: {machine()}{_gpu()}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# The from-scratch DeepDog recipe (aimed at >= 90% in <= 10 min): SGD + one-cycle, BN + ELU also between depthwise
# and pointwise (the optional `dw_bn`), crops of 40-100% of the photo, an EMA of the weights that is evaluated and
# kept, and progressive resizing 96 -> 128 px: the first 90% of the epochs train at 96 and 112 px, so 120 epochs take
# the time 90 took at 128 px. More epochs is what raises accuracy here (a 300-epoch run on a GPU passed 92%).
# The 128 px tail is short (12 epochs, not 30): with 30 the val accuracy drifted ~2 points down after the switch and
# one of five seeds stayed at 89.3%; with 12 all five seeds reach 90.4-90.9% (RESULTS.md).
DEEPDOG_RECIPE = ["--arch", "deepdog", "--arch-args", "alpha=0.5,dw_bn=true", "--size", "128", "--epochs", "120",
                  "--progressive", "96", "--progressive-until", "0.9", "--optimizer", "sgd", "--lr", "0.1",
                  "--weight-decay", "0.0005", "--augment", "scale=[0.4,1]", "--ema", "0.995"]


def part_train(data: Path, out: Path, only: str | None = None) -> str:
    rows, res = [], {}
    runs = {  # name -> (bundle stem, train arguments)
        "efficientnet_lite0 (probe + top fine-tune)": ("efficientnet_lite0", ["--arch", "efficientnet_lite0"]),
        "efficientnet_lite0 --linear-probe": ("efficientnet_lite0_probe",
                                              ["--arch", "efficientnet_lite0", "--linear-probe"]),
        "deepdog a=0.5 from scratch, defaults, 160 px, 40 ep": ("deepdog", ["--arch", "deepdog", "--arch-args",
                                                                           "alpha=0.5", "--size", "160", "--epochs",
                                                                           "40"]),
        "deepdog a=0.5 from scratch, recipe, 96->128 px, 120 ep": ("deepdog_recipe", DEEPDOG_RECIPE),
        "deepdog a=0.5 random init + distilled, 160 px, 30 ep": ("deepdog_distill", [
            "--arch", "deepdog", "--arch-args", "alpha=0.5", "--size", "160", "--epochs", "30",
            "--distill", str(out / "efficientnet_lite0.pvb")]),
        "deepdog a=0.5 from scratch, recipe, 96->128 px, 300 ep": ("deepdog_ceiling", [*DEEPDOG_RECIPE, "--epochs",
                                                                                       "300"]),
    }
    runs = {k: v for k, v in runs.items() if v[0] == only or (only is None and v[0] != "deepdog_ceiling")}
    for name, (key, args) in runs.items():
        bundle = out / f"{key}.pvb"
        secs, r = sh(pv("train", str(data), "--out", str(bundle), "--run-dir", str(out / f"run-{key}"),
                        "--no-tensorboard", "--json", "--device", DEVICE, *args))
        m = json.loads(r.stdout)["metrics"]
        res[name] = {"seconds": secs, "val_accuracy": m["accuracy"], "log_loss": m["log_loss"],
                     "best_epoch": m["best_epoch"]}
        ips = _img_per_s(out / f"run-{key}" / "log.csv")
        rows.append([name, f"{secs:.0f} s", f"{m['accuracy'] * 100:.1f}%", f"{m['log_loss']:.4f}", ips])
    (out / f"train_{only or 'all'}_{DEVICE}.json").write_text(json.dumps(res, indent=2))
    return table(f"Training on hotdog (1101 train / 187 val), device {DEVICE}, wall time incl. start-up",
                 ["run", "time", "val acc", "val log-loss", "train img/s (median epoch)"], rows)


def _img_per_s(csv_path: Path) -> str:
    import csv
    vals = [float(r["img_per_s"]) for r in csv.DictReader(csv_path.open()) if r["phase"] in ("train", "top")]
    return f"{statistics.median(vals):.0f}" if vals else "-"


def part_throughput(data: Path, out: Path) -> str:
    """Training img/s through the real pipeline (decode cache, augmentation workers, fwd+bwd) at 224."""
    rows, res = [], {}
    runs = {"deepdog a=0.5, 224 px": ["--arch", "deepdog", "--arch-args", "alpha=0.5"],
            "deepdog a=1, 224 px": ["--arch", "deepdog"],
            "efficientnet_lite0 --finetune full, 224 px": ["--arch", "efficientnet_lite0", "--finetune", "full"]}
    for name, args in runs.items():
        run = out / f"tp-{len(res)}"
        sh(pv("train", str(data), "--out", str(out / "tp.pvb"), "--run-dir", str(run), "--no-tensorboard", "--json",
              "--epochs", "2", "--device", DEVICE, *args))
        ips = _img_per_s(run / "log.csv")
        res[name] = ips
        rows.append([name, ips])
    (out / f"throughput_{DEVICE}.json").write_text(json.dumps(res, indent=2))
    return table(f"Training throughput, device {DEVICE}, real pipeline (augmentation in worker processes), batch 32",
                 ["model", "train img/s (median of 2 epochs)"], rows)


def part_export(out: Path) -> str:
    from pocketvision.core.contract import Contract
    from pocketvision.export.onnx import export_onnx
    from pocketvision.models import build_model
    from pocketvision.deploy.bench import latency
    rows, res = [], {}
    c = Contract(size=(224, 224), mean=(127.5,) * 3, std=(127.5,) * 3)
    for alpha in (0.5, 1.0):
        for act in ("elu", "relu"):
            m = build_model({"name": "deepdog", "args": {"alpha": alpha, "act": act, "num_classes": 2}})
            p = export_onnx(m, c, {"labels": ["hotdog", "not_hotdog"], "contract": c.to_dict()},
                            out / f"deepdog_{alpha}_{act}.onnx")
            lat = latency(p, threads=1, runs=200)
            res[f"deepdog_{alpha}_{act}"] = lat
            rows.append([f"deepdog alpha={alpha} {act}", f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}",
                         f"{p.stat().st_size / 1e6:.2f} MB"])
    (out / "export.json").write_text(json.dumps(res, indent=2))
    return table("Exported ONNX, onnxruntime, 224 px, batch 1, 1 thread",
                 ["model", "p50 ms", "p90 ms", "size"], rows)


def part_e2e(data: Path, out: Path) -> str:
    from pocketvision.deploy.bench import end_to_end
    rows, res = [], {}
    photos = sorted((data / "hotdog" / "val").rglob("*.jpg"))[:100]
    large = sorted((data / "photos-fullres").glob("*.jpg"))
    for name in ("deepdog.pvb", "efficientnet_lite0.pvb", "deepdog_distill.pvb"):
        b = out / name
        if not b.exists():
            continue
        onnx_path = out / name.replace(".pvb", ".onnx")
        sh(pv("export", str(b), "--out", str(onnx_path), "--no-verify"))
        small, big = end_to_end(onnx_path, photos, threads=1), end_to_end(onnx_path, large, threads=1, runs=5)
        res[name] = {"val_photos": small, "fullres": big}
        rows.append([name, f"{small['p50_ms']:.2f}", f"{big['p50_ms']:.2f}"])
    (out / "e2e.json").write_text(json.dumps(res, indent=2))
    return table("End to end, JPEG bytes -> label, 1 thread (p50)",
                 ["model", "~500 px val photos, ms", "12 MP photos-fullres, ms"], rows)


def part_cli(data: Path, out: Path) -> str:
    onnx_path = out / "deepdog.onnx"
    photo = sorted((data / "hotdog" / "val" / "hotdog").glob("*.jpg"))[0]
    times = [sh(pv("predict", str(onnx_path), str(photo)))[0] for _ in range(5)]
    (out / "cli.json").write_text(json.dumps({"seconds": times}))
    return table("`pocketvision predict model.onnx photo.jpg`, process start to printed label",
                 ["median", "min", "max"], [[f"{statistics.median(times):.2f} s", f"{min(times):.2f} s",
                                             f"{max(times):.2f} s"]])


def part_ultralytics(data: Path, out: Path, epochs: int = 15) -> str:
    py = Path(os.environ.get("PV_ULTRALYTICS_PYTHON", UL_VENV / "bin" / "python"))
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(UL_VENV)])
        sh([str(py), "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1", "ultralytics", "onnx",
            "onnxruntime", "onnxslim",
            # its tflite export (bench_compress.py) would otherwise try to pip-install these mid-export
            "litert-torch==0.10.0", "ai-edge-litert==2.3.0"])
    _, r = sh([str(py), str(HERE / "ultralytics_peer.py"), str(data / "hotdog"), str(out / "ultralytics"),
               str(epochs), str(data / "hotdog" / "val" / "hotdog"), DEVICE], cwd=out)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    (out / "ultralytics.json").write_text(json.dumps(res, indent=2))
    ips = 1101 * epochs / res["train_seconds"]
    return table(f"Peer: Ultralytics yolo11n-cls from scratch, {epochs} epochs, 224 px, batch 32, device {DEVICE}",
                 ["train time", "val top-1", "train img/s (incl. val)", "ONNX p50 1 thread", "predict API e2e p50"],
                 [[f"{res['train_seconds']:.0f} s", f"{res['val_top1'] * 100:.1f}%", f"{ips:.0f}",
                   f"{res['onnx_p50_ms_1thread']:.2f} ms", f"{res['predict_e2e_p50_ms']:.2f} ms"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="train,export,e2e,cli,ultralytics")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--device", default="auto", help="training device for every run: auto, cpu, cuda")
    a = ap.parse_args()
    global DEVICE
    if a.device == "auto":  # name the device in titles and file names; "auto" says nothing about the numbers
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    DEVICE = a.device
    data, out = Path(a.data).resolve(), Path(a.out).resolve()  # Ultralytics reads a relative path as a dataset name
    out.mkdir(parents=True, exist_ok=True)
    print(f"command: python benchmarks/bench_classify.py --device {a.device} --parts {a.parts}\n")
    for part in a.parts.split(","):
        if part in ("train", "deepdog", "ceiling"):
            only = {"train": None, "deepdog": "deepdog_recipe", "ceiling": "deepdog_ceiling"}[part]
            print(part_train(data / "hotdog", out, only=only), flush=True)
        elif part == "throughput":
            print(part_throughput(data / "hotdog", out), flush=True)
        elif part == "export":
            print(part_export(out), flush=True)
        elif part == "e2e":
            print(part_e2e(data, out), flush=True)
        elif part == "cli":
            print(part_cli(data, out), flush=True)
        elif part == "ultralytics":
            print(part_ultralytics(data, out), flush=True)
        else:
            raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main()
