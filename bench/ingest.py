#!/usr/bin/env python3
"""Ingest benchmark: DCMTK storescu -> liver-node vs DCMTK storescp vs Orthanc, on this machine.

N CT instances (512x512, 16-bit, ~0.5 MB each) are sent by ``storescu`` (TCP_NODELAY=1) over one
association, then over four concurrent associations (four storescu processes, N/4 instances each),
into a fresh receiver each time:

  (a) liver-node   ``python -m node.cli serve --no-worker`` (fsyncs file, directory and index row
                   before answering; max PDU 128 KiB, its default)
  (b) storescp     ``storescp -od DIR PORT``; ``--fork`` for the four-association case, since plain
                   storescp serves one association at a time. storescp does NOT fsync; max PDU 16 KiB
                   (its default).
  (c) Orthanc      /usr/sbin/Orthanc started by the test launcher (tests/support/orthanc.py) in a temp
                   dir (``SyncStorageArea`` true, its default fsync; ``MaximumPduLength`` 16 KiB, its
                   default; 4 DICOM threads).

storescp and Orthanc get TCP_NODELAY=1 in their environment too (DCMTK keeps Nagle on otherwise,
costing ~40 ms per instance on loopback; ``--dcmtk-nagle`` measures that default instead).

Time is measured from the start of the storescu processes to the exit of the last one; every
storescu must exit 0 and the receiver must hold all N instances afterwards, or the run fails.
Then a fresh liver-node receives 4N instances (N, then 3N more, four associations) and the
process's peak RSS (VmHWM) is sampled after N and after 4N.

Usage:  .venv/bin/python bench/ingest.py [--instances 300] [--repeat 1] [--json] [--dcmtk-nagle] [--skip-rss]
Exit status 0 when the targets hold (liver-node >= 1.2x Orthanc on 1 and 4 associations; VmHWM flat
from N to 4N: within 10 % or 16 MiB), 1 when not, or on a failed run.
Needs: dcmtk (storescu, storescp, echoscu) and orthanc (Debian packages). Noisy on a shared box.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ctdata import SeriesSpec, uid, write_series  # noqa: E402
from tests.support.nodeproc import NodeProcess  # noqa: E402
from tests.support.orthanc import ORTHANC_BIN, OrthancPACS, free_port  # noqa: E402

CALLING_AET = "BENCHSCU"
RECEIVERS = ("liver-node", "storescp", "orthanc")
ASSOC_COUNTS = (1, 4)
START_TIMEOUT = 60.0
# DCMTK (storescu, storescp, and Orthanc, which links it) disables Nagle only when TCP_NODELAY=1 is in
# its environment; without it each C-STORE response waits for a delayed ACK (~40 ms per instance here).
# liver-node sets TCP_NODELAY on its sockets itself. --dcmtk-nagle leaves the receivers' default.
RECEIVER_ENV = {**os.environ, "TCP_NODELAY": "1"}
SEND_TIMEOUT = 600.0


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited ({proc.returncode})\n{_tail(log)}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f} s\n{_tail(log)}")


def _tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def echo_ok(aet: str, port: int) -> bool:
    r = subprocess.run(["echoscu", "-to", "2", "-aet", CALLING_AET, "-aec", aet, "127.0.0.1", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# --- receivers ------------------------------------------------------------------------------
class Receiver:
    """A fresh receiver with its own data dir; ``start`` blocks until it answers, ``close`` kills it."""

    name = ""
    aet = ""

    def __init__(self, workdir: Path, assocs: int) -> None:
        self.workdir = workdir
        self.assocs = assocs
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.log"

    def start(self) -> "Receiver":
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # own session: also storescp --fork children
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


class LiverNode(Receiver):
    name, aet = "liver-node", "LIVERNODE"

    def __init__(self, workdir: Path, assocs: int) -> None:
        super().__init__(workdir, assocs)
        self.node: NodeProcess | None = None

    def start(self) -> "LiverNode":
        self.workdir.mkdir(parents=True)
        config = '[node]\nbind = "127.0.0.1"\n[metrics]\nbind = "127.0.0.1"\n'
        self.node = NodeProcess(self.workdir / "data", "--no-worker", config=config)
        self.node.start(START_TIMEOUT)  # returns on the "listening dicom=... metrics=..." line
        self.proc, self.port, self.log = self.node.proc, self.node.dicom_port, self.node.log_path
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stored(self) -> int:
        return sum(1 for _ in (self.workdir / "data" / "spool" / "studies").glob("*/*.dcm"))

    def close(self) -> None:
        if self.node is not None and self.proc.poll() is None:
            try:
                self.node.stop(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
        super().close()


class StoreSCP(Receiver):
    name, aet = "storescp", "STORESCP"

    def start(self) -> "StoreSCP":
        out = self.workdir / "out"
        out.mkdir(parents=True)
        self.port = free_port()
        args = ["storescp", "-aet", self.aet, "-od", str(out)]
        if self.assocs > 1:
            args.append("--fork")  # plain storescp serves one association at a time
        args.append(str(self.port))
        self.proc = subprocess.Popen(args, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env=RECEIVER_ENV)
        wait_until(lambda: echo_ok(self.aet, self.port), START_TIMEOUT, "storescp", self.proc, self.log)
        return self

    def stored(self) -> int:
        return count_files(self.workdir / "out")


class Orthanc(Receiver):
    name, aet = "orthanc", "ORTHANC"

    def __init__(self, workdir: Path, assocs: int) -> None:
        super().__init__(workdir, assocs)
        self.pacs: OrthancPACS | None = None

    def start(self) -> "Orthanc":
        self.workdir.mkdir(parents=True)
        # Orthanc 1.10 has no DICOM bind address; the SCU uses loopback. SyncStorageArea: the 1.10 default, stated.
        self.pacs = OrthancPACS(self.workdir, aet=self.aet, env=RECEIVER_ENV,
                                config={"Name": "bench", "StorageCompression": False, "SyncStorageArea": True})
        try:
            self.pacs.start(START_TIMEOUT)  # returns once REST /system answers; RuntimeError with the log tail
        finally:
            self.proc = self.pacs.proc  # so close() kills it even when start failed
        self.port = self.pacs.port
        wait_until(lambda: echo_ok(self.aet, self.port), START_TIMEOUT, "orthanc DICOM", self.proc, self.log)
        return self

    def stored(self) -> int:
        stats = self.pacs.get("/statistics") if self.pacs is not None else None
        return int(stats["CountInstances"]) if stats else -1


RECEIVER_CLASSES = {"liver-node": LiverNode, "storescp": StoreSCP, "orthanc": Orthanc}


# --- sending --------------------------------------------------------------------------------
def split(files: list[Path], parts: int) -> list[list[Path]]:
    size = -(-len(files) // parts)
    return [files[i:i + size] for i in range(0, len(files), size)]


def send(rx: Receiver, files: list[Path], assocs: int, logdir: Path, expect: int | None = None) -> float:
    """Run ``assocs`` storescu processes concurrently; seconds from first start to last exit.

    Afterwards the receiver must hold ``expect`` instances (default: ``len(files)``): storescu
    exits 0 even when a C-STORE was answered with a failure status.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    procs, logs = [], []
    t0 = time.perf_counter()
    try:
        for i, chunk in enumerate(split(files, assocs)):
            log = logdir / f"storescu-{rx.name}-{assocs}-{i}.log"
            with log.open("w") as fh:
                procs.append((log, subprocess.Popen(
                    ["storescu", "-aet", CALLING_AET, "-aec", rx.aet, "127.0.0.1", str(rx.port), *map(str, chunk)],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)))
        codes = [p.wait(SEND_TIMEOUT) for _, p in procs]
        elapsed = time.perf_counter() - t0
    finally:
        for _, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for (log, _), code in zip(procs, codes):
        if code:
            raise RuntimeError(f"storescu -> {rx.name} exited {code}:\n{_tail(log)}")
    expect = len(files) if expect is None else expect
    # Every C-STORE was answered before storescu exited, so this is immediate; the wait is slack.
    try:
        wait_until(lambda: rx.stored() >= expect, 10.0, f"{rx.name} holding {expect} instances")
    except RuntimeError:
        raise RuntimeError(f"{rx.name}: {rx.stored()} instances stored, {expect} expected\n{_tail(rx.log)}") from None
    return elapsed


def measure(name: str, files: list[Path], assocs: int, tmp: Path, run_id: str) -> float:
    rx = RECEIVER_CLASSES[name](tmp / f"{name}-{assocs}-{run_id}", assocs)
    try:
        rx.start()
        return send(rx, files, assocs, tmp)
    finally:
        rx.close()


def rss_round(files: list[Path], first: int, tmp: Path) -> dict:
    """A fresh liver-node: send ``first`` instances, then the rest; VmHWM (KiB) after each."""
    rx = LiverNode(tmp / "liver-node-rss", 4)
    try:
        rx.start()
        start_kib = vm_hwm_kib(rx.pid)
        send(rx, files[:first], 4, tmp)
        after_first = vm_hwm_kib(rx.pid)
        send(rx, files[first:], 4, tmp, expect=len(files))
        after_all = vm_hwm_kib(rx.pid)
        return {"idle_kib": start_kib, "after_first_kib": after_first, "after_all_kib": after_all,
                "first": first, "total": len(files)}
    finally:
        rx.close()


# --- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=300, help="instances per measurement (default 300)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement; the median is reported")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--dcmtk-nagle", action="store_true",
                    help="start storescp and Orthanc without TCP_NODELAY=1 (their default: Nagle on)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 4N-instance RSS round")
    args = ap.parse_args(argv)
    if args.instances < 4 or args.repeat < 1:
        ap.error("--instances >= 4 and --repeat >= 1")
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (apt install dcmtk)")
    if not os.access(ORTHANC_BIN, os.X_OK):
        ap.error(f"{ORTHANC_BIN} not found (apt install orthanc)")

    n = args.instances
    if args.dcmtk_nagle:
        RECEIVER_ENV.pop("TCP_NODELAY", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no orphan receivers
    note = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    tmp = Path(tempfile.mkdtemp(prefix="liver-node-bench-"))
    try:
        t = time.perf_counter()
        study = uid("bench-ingest", n)
        total_rss = 0 if args.skip_rss else 4 * n
        files: list[Path] = []
        for s in range(4 if total_rss else 1):
            files += write_series(tmp / "data", study, SeriesSpec(f"Bench {s}", n, number=10 + s))
        timed = files[:n]
        nbytes = sum(p.stat().st_size for p in timed)
        note(f"generated {len(files)} instances ({nbytes / n / 1e6:.3f} MB each) in {time.perf_counter() - t:.1f} s")

        seconds: dict[tuple[str, int], list[float]] = {(r, a): [] for r in RECEIVERS for a in ASSOC_COUNTS}
        for rep in range(args.repeat):
            for assocs in ASSOC_COUNTS:
                for name in RECEIVERS:
                    s = measure(name, timed, assocs, tmp, f"r{rep}")
                    seconds[(name, assocs)].append(s)
                    note(f"  run {rep + 1}/{args.repeat} {name:10s} x{assocs}: {s:6.2f} s  {n / s:7.1f} inst/s")

        results = {}
        for (name, assocs), runs in seconds.items():
            med = statistics.median(runs)
            results.setdefault(name, {})[str(assocs)] = {
                "seconds": med, "instances_per_s": n / med, "mb_per_s": nbytes / med / 1e6, "runs_s": runs}
        ratios = {f"vs_{other}": {str(a): results["liver-node"][str(a)]["instances_per_s"] / results[other][str(a)]["instances_per_s"]
                                  for a in ASSOC_COUNTS}
                  for other in ("storescp", "orthanc")}
        rss = None if args.skip_rss else rss_round(files, n, tmp)
        targets = {f"vs_orthanc_{a}_assoc_ge_1.2": ratios["vs_orthanc"][str(a)] >= 1.2 for a in ASSOC_COUNTS}
        if rss:
            # "Flat": the 4N peak within 10 % (or 16 MiB) of the N peak.
            growth = rss["after_all_kib"] - rss["after_first_kib"]
            targets["rss_flat"] = growth <= max(16 * 1024, 0.10 * rss["after_first_kib"])
        report = {"instances": n, "bytes": nbytes, "repeat": args.repeat, "cpus": os.cpu_count(),
                  "results": results, "ratios_liver_node": ratios, "rss": rss, "targets": targets,
                  "notes": ["storescp does not fsync; liver-node and Orthanc do",
                            "storescp --fork for 4 associations",
                            "storescp and Orthanc run with " + ("their default Nagle (--dcmtk-nagle)" if args.dcmtk_nagle
                                                                else "TCP_NODELAY=1 (as storescu)"),
                            "max PDU: liver-node 131072, storescp 16384, Orthanc 16384 (defaults)"]}
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            print_report(report)
        return 0 if all(targets.values()) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_report(r: dict) -> None:
    n = r["instances"]
    print(f"\n{n} CT instances 512x512 ({r['bytes'] / 1e6:.1f} MB), storescu TCP_NODELAY=1, "
          f"{r['cpus']} CPUs, median of {r['repeat']}")
    print(f"{'receiver':12s} {'assocs':>6s} {'seconds':>8s} {'inst/s':>8s} {'MB/s':>8s}")
    for name in RECEIVERS:
        for a in ASSOC_COUNTS:
            x = r["results"][name][str(a)]
            print(f"{name:12s} {a:6d} {x['seconds']:8.2f} {x['instances_per_s']:8.1f} {x['mb_per_s']:8.1f}")
    for other, by in r["ratios_liver_node"].items():
        print(f"liver-node / {other[3:]:9s}: " + "  ".join(f"{a} assoc {v:.2f}x" for a, v in by.items()))
    if r["rss"]:
        x = r["rss"]
        print(f"liver-node VmHWM: idle {x['idle_kib'] / 1024:.1f} MiB, after {x['first']} {x['after_first_kib'] / 1024:.1f} MiB, "
              f"after {x['total']} {x['after_all_kib'] / 1024:.1f} MiB")
    print("targets: " + ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in r["targets"].items()))
    for line in r["notes"]:
        print("note: " + line)


if __name__ == "__main__":
    sys.exit(main())
