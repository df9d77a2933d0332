"""int8 numerics on an AVX2-only CPU, checked on any x86-64 host (issue 34's first bar): the deployed int8 models
run under QEMU's user-mode emulation of an Intel Haswell (``qemu-x86_64 -cpu Haswell``: AVX2, FMA, no AVX-512,
no VNNI), where onnxruntime's x86 int8 kernels take their non-VNNI path (u8 x s8 products added in pairs in 16
bits by ``vpmaddubsw``, which can saturate). CPUID is emulated, so every library picks the kernels it would pick
on such a CPU (torch reports ``AVX2``); QEMU passes the host's ``/proc/cpuinfo`` through, so the child is told
the emulated CPU's flags with ``CNNCOMPRESS_CPUINFO`` (``hardware.CPUINFO_VARIABLE``) and chooses its int8
scheme as it would there (``deploy.int8.reduce_range_here``: 7-bit weights without VNNI). The same child also
runs natively on the host. Speed under an emulator means nothing: only agreement and accuracy are reported.

Models (written on the host, then loaded from their ``.ccz`` by each child, probes and all):

* ``fer-minixception`` int8, calibrated on the LFW training faces as ``table-emotion`` does it; top-1 agreement of
  each int8 engine with its fake-quant twin (the same QDQ graph in fp32 arithmetic, ``deploy.int8.fake_quant_twin``;
  8-bit twin for the 8-bit graph, 7-bit twin for the 7-bit one) on all 100 LFW faces (67 training, 8 val and the
  25 sealed held-out ones, read once per child) and with the fp32 original;
* VGG-S and SqueezeNet-1.1 baselines of a ``reproduce table2 --quick`` (or ``bench``) run, made int8 here with
  their calibration on the run's mnist5k train split (the bench's int8 row); test accuracy of the deployed int8
  model against the fp32 baseline (paired bootstrap, ``experiments.stats.delta_interval``), decided like the
  finding ``S-int8-keeps-accuracy`` (non-inferior within 1 point, ``experiments.verdict``).

    .venv/bin/cnncompress reproduce table2 --quick --out runs/rq      # the baselines (a few minutes)
    .venv/bin/python benchmarks/check_int8_on_avx2.py --rows runs/rq/table2/rows --out docs/results/int8-avx2

Writes ``OUT/results.json`` (both CPUs) and prints a table. Exit 2 (one line) without qemu-x86_64 or the baselines.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

QEMU = "qemu-x86_64"
CPU_MODEL = "Haswell,-hle,-rtm,-invpcid,-x2apic,-tsc-deadline,-pcid"  # the features TCG cannot emulate, off
HASWELL_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
                 "sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq "
                 "ssse3 fma cx16 pcid sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm abm "
                 "fsgsbase bmi1 avx2 smep bmi2 erms")
BASELINES = {"vgg_s": "VGG-S (baseline)", "squeezenet1_1": "SqueezeNet-1.1 (baseline)"}


def _quiet_apply(model, method, images):
    from cnncompress import methods
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return methods.apply(model, method, **methods.with_data(method, {}, images))


def prepare(rows: Path, work: Path) -> dict:
    """On the host: the int8 ``.ccz`` files (with probes of the val images) and their fp32 originals."""
    from cnncompress import storage
    from cnncompress.data import build_dataset
    from cnncompress.deploy import probes
    from cnncompress.experiments.emotion_faces import faces
    from cnncompress.models.loading import input_format, load_model
    made = {}
    teacher = load_model("fer-minixception").eval()
    data = faces("lfw-faces", teacher)
    int8 = _quiet_apply(teacher, "int8", data["train"].images)
    probes.save(int8, work / "fer-int8.ccz", data["val"].images, "LFW val faces")
    made["fer-minixception"] = {"int8": "fer-int8.ccz", "original": "fer-minixception"}
    for name, label in BASELINES.items():
        found = sorted(rows.glob(f"{name}-{label}-*/model.ccz"))
        if not found:
            raise SystemExit(f"{rows}: no '{label}' row (model.ccz); run `cnncompress reproduce table2 --quick` first")
        baseline = storage.load(found[0]).eval()
        fmt = input_format(baseline)
        kw = {"input_size": fmt["input_size"], "channels": fmt["channels"], "mean": fmt["mean"], "std": fmt["std"]}
        result = json.loads((found[0].parent / "result.json").read_text())
        dataset = result.get("data", "mnist5k")
        train, val = build_dataset(dataset, "train", **kw), build_dataset(dataset, "val", **kw)
        int8 = _quiet_apply(baseline, "int8", train.images)
        probes.save(int8, work / f"{name}-int8.ccz", val.images, f"{dataset} val split")
        shutil.copy(found[0], work / f"{name}-fp32.ccz")
        made[name] = {"int8": f"{name}-int8.ccz", "original": f"{name}-fp32.ccz", "data": dataset, "format": kw}
    (work / "plan.json").write_text(json.dumps(made))
    return made


@torch.inference_mode()
def _labels(run, images: torch.Tensor, batch: int = 1) -> torch.Tensor:
    return torch.cat([torch.as_tensor(run(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)])


def _engines(int8) -> tuple[dict, dict]:
    """``({name: (run, its twin's name)}, {bits: QDQ graph})``: each scheme on each engine, and the graphs."""
    from cnncompress.deploy.int8 import OrtInt8Model, int8_onnx, to_openvino_int8
    graphs = {"8-bit": int8_onnx(int8, reduce_range=False), "7-bit": int8_onnx(int8, reduce_range=True)}
    engines = {f"onnxruntime int8, {bits} weights": (OrtInt8Model(graph), bits) for bits, graph in graphs.items()}
    for bits, graph in graphs.items():
        try:
            engines[f"OpenVINO int8, {bits} weights"] = (to_openvino_int8(OrtInt8Model(graph)), bits)
        except Exception as error:  # noqa: BLE001 - an engine that cannot run here is reported, not fatal
            engines[f"OpenVINO int8, {bits} weights"] = (None, f"{type(error).__name__}: {str(error)[:120]}")
    return engines, graphs


def child(work: Path) -> dict:
    """In the process whose CPU is checked: agreement and accuracy of every int8 engine (see the docstring)."""
    from cnncompress import deploy, hardware, storage
    from cnncompress.data import build_dataset, final_evaluation
    from cnncompress.deploy import self_check
    from cnncompress.deploy.int8 import fake_quant_twin, reduce_range_here, scheme
    from cnncompress.experiments import stats, verdict
    from cnncompress.experiments.emotion_faces import faces
    from cnncompress.models.loading import load_model
    torch.set_num_threads(1)
    plan = json.loads((work / "plan.json").read_text())
    out = {"cpu": hardware.summary(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
           "has_vnni": hardware.has_vnni(), "scheme_here": scheme(reduce_range_here()), "models": {}}
    for name, files in plan.items():
        started = time.perf_counter()
        int8 = storage.load(work / files["int8"]).eval()
        deployed = deploy.to_inference(copy.deepcopy(int8)).eval()
        engines, graphs = _engines(int8)
        twins = {bits: fake_quant_twin(graph, 1) for bits, graph in graphs.items()}
        if name == "fer-minixception":
            original = load_model("fer-minixception").eval()
            data = faces("lfw-faces", original)
            with final_evaluation(data["heldout"]) as heldout:  # this child's one read of the held-out faces
                images = torch.cat([data["train"].images, data["val"].images, heldout.images])
            truth, what = _labels(original, images), "all 100 LFW faces (67 train, 8 val, 25 held-out)"
        else:
            original = storage.load(work / files["original"]).eval()
            test = build_dataset(files["data"], "test", **files["format"])
            with final_evaluation(test) as sealed:  # this child's one read of the test split
                images, truth = sealed.images, sealed.labels
            what = f"{files['data']} test split ({len(images)} images)"
        twin_labels = {bits: _labels(twin, images) for bits, twin in twins.items()}
        original_labels = _labels(original, images, 64)
        record = {"images": what, "count": len(images),
                  "probe_check": self_check.describe(self_check.record_of(deployed)),
                  "deployed_engine": self_check.engine_of(deployed),
                  "deployed_scheme": (getattr(deployed, "metadata", {}) or {}).get("int8_scheme"), "engines": {}}
        chosen = record["deployed_scheme"] or ""
        rows = {"deployed (deploy.to_inference)": (deployed, "7-bit" if "7-bit" in chosen else "8-bit")}
        rows.update(engines)
        for label, (run, twin) in rows.items():
            if run is None:
                record["engines"][label] = {"error": twin}
                continue
            got = _labels(run, images)
            entry = {"vs_twin": float((got == twin_labels[twin]).float().mean() * 100), "twin": f"{twin} twin",
                     "vs_original": float((got == original_labels).float().mean() * 100)}
            if name != "fer-minixception":
                correct, control = (got == truth).numpy(), (original_labels == truth).numpy()
                delta = stats.delta_interval([(correct, control)])
                entry.update(accuracy=float(correct.mean() * 100), fp32_accuracy=float(control.mean() * 100),
                             delta=delta, verdict=verdict.decide(delta["low"], delta["high"],
                                                                 verdict.Claim("above", -1.0)))
            record["engines"][label] = entry
        record["test_evaluations"] = 1
        record["seconds"] = round(time.perf_counter() - started, 1)
        out["models"][name] = record
        print(f"  {name}: {record['count']} images, {record['seconds']:.0f} s", file=sys.stderr, flush=True)
    return out


def run_child(work: Path, emulated: bool) -> dict:
    """This script's ``--child`` on the host, or under ``qemu-x86_64 -cpu Haswell`` told the emulated flags."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", str(work)]
    if emulated:
        cpuinfo = work / "cpuinfo-haswell"
        from cnncompress.hardware import cpu_name
        host = cpu_name()
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: QEMU TCG -cpu Haswell (AVX2, no VNNI), emulated on "
                           f"{host}\nflags\t\t: {HASWELL_FLAGS}\n")
        env["CNNCOMPRESS_CPUINFO"] = str(cpuinfo)
        command = [QEMU, "-cpu", CPU_MODEL] + command
    tag = "emulated" if emulated else "host"
    done = subprocess.run(command, env=env)  # its progress lines (stderr) show as they come
    if done.returncode != 0:
        raise SystemExit(f"the {tag} child failed (exit {done.returncode})")
    return json.loads((work / f"{tag}.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="the rows folder of a reproduce table2 / bench run")
    parser.add_argument("--out", type=Path, default=Path("runs/int8-avx2"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        emulated = "CNNCOMPRESS_CPUINFO" in os.environ
        result = child(args.child)
        (args.child / f"{'emulated' if emulated else 'host'}.json").write_text(json.dumps(result, indent=1))
        return 0
    if shutil.which(QEMU) is None:
        print(f"{QEMU} not found: install Debian's qemu-user (apt-get install qemu-user)")
        return 2
    if args.rows is None or not args.rows.is_dir():
        print(f"--rows {args.rows}: not a folder; run `cnncompress reproduce table2 --quick --out runs/rq` and give "
              "runs/rq/table2/rows")
        return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="int8-avx2-") as tmp:
        work = Path(tmp)
        prepare(args.rows, work)
        results = {"started": started, "rows": str(args.rows), "qemu_cpu": CPU_MODEL}
        for emulated in (False, True):
            t0 = time.perf_counter()
            results["emulated" if emulated else "host"] = run_child(work, emulated)
            print(f"{'emulated Haswell' if emulated else 'host'}: {time.perf_counter() - t0:.0f} s", flush=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for where in ("host", "emulated"):
        side = results[where]
        print(f"\n== {side['cpu']['cpu']} (torch: {side['torch_capability']}, VNNI: {side['has_vnni']}; "
              f"int8 scheme chosen here: {side['scheme_here']})")
        for name, record in side["models"].items():
            print(f"{name}: {record['images']}; deployed on {record['deployed_engine']} ({record['deployed_scheme']})")
            print(f"  {record['probe_check']}")
            for label, entry in record["engines"].items():
                if "error" in entry:
                    print(f"  {label:<36} cannot run here: {entry['error']}")
                    continue
                line = (f"  {label:<36} vs {entry['twin']}: {entry['vs_twin']:6.2f} %   vs fp32 original: "
                        f"{entry['vs_original']:6.2f} %")
                if "accuracy" in entry:
                    d = entry["delta"]
                    line += (f"   test acc {entry['accuracy']:.2f} vs fp32 {entry['fp32_accuracy']:.2f}: "
                             f"Δ {d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] -> {entry['verdict']}")
                print(line)
    print(f"\nwritten: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
