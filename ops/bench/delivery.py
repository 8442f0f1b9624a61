"""Benchmark of the peer-to-peer delivery: throughput, resume after a kill, handshakes per second.

Everything runs on loopback against real ``aim-node serve`` processes (``node.cli``), with
delivery tokens signed by a hub key made here (no hub process: the node only needs the hub's
public key). Three parts, each with its baseline in the same run:

* **transfer**: one file (``--size-mb``, 8 MiB blocks) fetched by the real buyer, the
  ``aim-node fetch`` CLI in its own process, from a fresh ``aim-node serve`` process. Runs,
  alternating in order over ``--rounds``:

  - ``encrypted``: the protocol as shipped (secretstream records);
  - ``raw`` (baseline a): the same two processes and code paths with one setting changed, the
    record cipher: ``FrameSealer``/``FrameOpener`` in both processes seal a record by
    appending a zero 17-byte tag instead of ``crypto_secretstream_…_push``/``pull`` (so frame
    sizes, framing, block hashing, disk reads and writes, fsyncs, acks are the same);
  - ``crypto-only`` (baseline b): one process, no sockets, no disk writes: per block, the
    seller's SHA-256 of the block, secretstream encryption of its 1 MiB records through the
    project's ``FrameSealer``, decryption through ``FrameOpener``, and the buyer's SHA-256 of
    the decrypted records (blocks read with ``pread`` from the page cache). The buyer's
    whole-object SHA-256 (``content_hash``) is not in this loop (it only makes the ceiling
    higher); it runs single-threaded where the transfer has two processes and a worker thread.

  A transfer counts only if the CLI exits 0 with the file renamed into place and the node's
  receipt says ``complete``. MB/s (10^6 bytes per second) is the object size over the buyer's
  time in ``node.cli.main`` (``node.delivery.client`` imported before the clock starts; the
  token check, connection, handshake and the content-hash check are inside). Peak RSS per
  side: the node's ``VmHWM`` from ``/proc/<pid>/status`` after the transfer, the buyer's
  ``ru_maxrss`` from ``wait4`` (the same kernel high-water mark; ``buyer_rss_at_start_mb`` is
  the interpreter and its imports). CPU per side: the node's utime+stime delta over the
  transfer from ``/proc/<pid>/stat``; the buyer's over ``main`` from ``getrusage`` (all its
  threads: ``buyer_transfer_cpu_s``) and for the whole process from ``wait4``.
  ``--out-dir`` decides where the buyer writes (the buyer fsyncs each verified block, so on a
  disk the disk's write bandwidth can be the ceiling; ``/dev/shm`` takes it out);
  ``--disk-dir DIR`` adds, last in each round, the encrypted transfer writing to ``DIR`` as a
  reference (no ratio: it differs in where the buyer writes).

* **resume**: the same transfer, the buyer SIGKILLed at a random moment of the block after half
  the blocks are verified (uniform over one block's time so far), and run again; separately
  the node SIGKILLed the same way and restarted on the same port while the buyer retries
  (``--retries 30``). Re-sent bytes come from the node's final receipt: ``bytes_sent - size_bytes``
  (``bytes_sent`` counts every byte each time it was served, the intervals' union is the
  object once). Target: at most one block.

* **handshakes**: ``--hs-clients`` concurrent buyers on one node, each op a full
  ``aimarket-delivery/1`` handshake, the node binding the token (the first run: each op a fresh
  token and buyer key) or admitting a resume of its bound token (the second run: the same
  tokens again with ``resume_block`` = the block count, so nothing is re-sent), then a one-block
  (4 KiB) transfer, ack, signed confirmation and the node's signed receipt. The client is the
  protocol's own model code (``ClientHandshake``, frames, ``issue_confirmation``), without disk
  writes; tokens are minted and verified before the clock starts. Baseline: raw Ed25519
  verifications per second (pynacl, one thread) in the same round.

Usage::

    python3 ops/bench/delivery.py --size-mb 2048 --rounds 3 --out-dir /dev/shm/aimarket-bench
    python3 ops/bench/delivery.py --size-mb 200 --rounds 2 --parts transfer      # development
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.common import add_common_args, emit, loadavg, median, ratio, wait_for_quiet  # noqa: E402
from ops.bench.delivery_parts import (  # noqa: E402
    BenchWorld,
    NodeProcess,
    child_command,
    crypto_loop,
    handshake_round,
    install_plain_cipher,
    proc_cpu_s,
    proc_peak_rss_kb,
    verified_blocks,
    wait_for,
)

MB = 1_000_000
CIPHERS = ("secretstream", "none")


# -- child entry points (the same launcher for both ciphers, so only the cipher differs) -----------
def child_main(argv: list[str]) -> int:
    """``_node|_fetch --cipher C -- <aim-node arguments>``: run ``node.cli`` with the cipher set."""
    if argv[0] == "_crypto":
        print(json.dumps(crypto_loop(Path(argv[1]), int(argv[2]))))
        return 0
    role, cipher, rest = argv[0], argv[2], argv[argv.index("--") + 1:]
    if cipher == "none":
        install_plain_cipher()
    import resource

    import node.delivery.client  # noqa: F401 - imported before the clock starts (cmd_fetch imports it late)
    from node.cli import main as aim_node

    started, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    rss_at_start_kb = proc_peak_rss_kb(os.getpid())  # the interpreter and its imports
    code = aim_node(rest)
    if role == "_fetch":
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
        Path(os.environ["AIMARKET_BENCH_REPORT"]).write_text(json.dumps({
            "seconds": time.perf_counter() - started, "rc": code, "rss_at_start_kb": rss_at_start_kb,
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}))
    return code


def crypto_only(world: BenchWorld) -> dict[str, Any]:
    """Baseline b in its own process (so its RSS and CPU are its own)."""
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_crypto", str(world.file),
                              str(world.block_size)], cwd=ROOT, stdout=subprocess.PIPE, env=world.env())
    output = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"outcome": f"exit {os.waitstatus_to_exitcode(status)}"}
    done = json.loads(output)
    return {"outcome": "ok", "seconds": round(done["seconds"], 3), "mb_per_s": round(done["bytes"] / done["seconds"] / MB, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


# -- one transfer ----------------------------------------------------------------------------------
def run_fetch(world: BenchWorld, node: NodeProcess, cipher: str, out: Path, *, retries: int = 0,
              token: str | None = None, on_start: Any = None) -> dict[str, Any]:
    """Fetch the big object once with the CLI; the buyer's and node's figures and the outcome."""
    token_file, key_file = world.buyer_files(token)
    report = out.with_name(out.name + ".bench.json")
    for stale in (out, report, out.with_name(out.name + ".receipt.json")):
        stale.unlink(missing_ok=True)
    env = {**world.env(), "AIMARKET_BENCH_REPORT": str(report)}
    node_cpu0 = proc_cpu_s(node.pid)
    errors = out.with_name(out.name + ".stderr")
    with open(errors, "wb") as err_file:
        buyer = subprocess.Popen(
            child_command("_fetch", cipher, ["--home", str(world.buyer_home), "fetch", "--token", str(token_file),
                                             "--key", str(key_file), "--out", str(out), "--seller", node.address,
                                             "--hub-key", world.hub_key_arg, "--retries", str(retries),
                                             "--no-progress"]),
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err_file)
        if on_start is not None:
            on_start(buyer)
        _, status, usage = os.wait4(buyer.pid, 0)  # rusage of this child alone: peak RSS and CPU
    buyer.returncode = os.waitstatus_to_exitcode(status)
    err = errors.read_text(errors="replace").strip()
    errors.unlink()
    result: dict[str, Any] = {"buyer_rc": buyer.returncode, "buyer_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                              "buyer_cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}
    if node.alive():
        result["node_cpu_s"] = round(proc_cpu_s(node.pid) - node_cpu0, 2)
        result["node_peak_rss_mb"] = round(proc_peak_rss_kb(node.pid) / 1024, 1)
    receipt_path = out.with_name(out.name + ".receipt.json")
    if buyer.returncode == 0 and out.exists() and receipt_path.exists():
        receipt = (json.loads(receipt_path.read_text()).get("receipt") or {}).get("credentialSubject") or {}
        timed = json.loads(report.read_text())
        seconds = timed["seconds"]
        result["buyer_transfer_cpu_s"] = round(timed["cpu_s"], 2)
        result["buyer_rss_at_start_mb"] = round(timed["rss_at_start_kb"] / 1024, 1)
        result.update(outcome="ok" if receipt.get("outcome") == "complete" else f"receipt {receipt.get('outcome')}",
                      seconds=round(seconds, 3), mb_per_s=round(world.size / seconds / MB, 1),
                      bytes_sent=receipt.get("bytes_sent"), sessions=receipt.get("sessions"),
                      intervals=receipt.get("intervals"))
    else:
        result["outcome"] = err.splitlines()[-1][:160] if err else f"exit {buyer.returncode}"
    return result


def transfer_run(world: BenchWorld, cipher: str, out_dir: Path) -> dict[str, Any]:
    node = NodeProcess(world, child_command("_node", cipher, world.serve_args()))
    try:
        result = run_fetch(world, node, cipher, out_dir / "object.out")
    finally:
        node.stop()
        _cleanup(out_dir / "object.out")
    return result


def transfer_part(world: BenchWorld, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    kinds = ["encrypted", "raw", "crypto-only"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in [*kinds, "encrypted, to disk"]}
    for round_no in range(args.rounds):
        order = kinds[round_no % 3:] + kinds[:round_no % 3]  # each kind leads one round in three
        if args.disk_dir:
            order.append("encrypted, to disk")  # a reference, last: it differs in where the buyer writes
        for kind in order:
            if kind == "crypto-only":
                result = crypto_only(world)
            elif kind == "encrypted, to disk":
                result = transfer_run(world, "secretstream", Path(args.disk_dir))
            else:
                result = transfer_run(world, "secretstream" if kind == "encrypted" else "none", out_dir)
            result.update(kind=kind, round=round_no + 1, load=loadavg())
            emit({"part": "transfer", **result})
            runs[kind].append(result)
    summary: dict[str, Any] = {}
    for kind, results in runs.items():
        ok = [r for r in results if r["outcome"] == "ok"]
        if not results:
            continue
        summary[kind] = {
            "median_mb_per_s": median([r["mb_per_s"] for r in ok]),
            "per_round_mb_per_s": [r.get("mb_per_s") for r in results],
            "statuses": _statuses(results),
            **{f"median_{k}": median([r[k] for r in ok if k in r])
               for k in ("buyer_peak_rss_mb", "node_peak_rss_mb", "buyer_cpu_s", "buyer_transfer_cpu_s", "node_cpu_s",
                         "peak_rss_mb", "cpu_s") if any(k in r for r in ok)},
        }
    enc = summary["encrypted"]["median_mb_per_s"]
    summary["encrypted_over_crypto_only"] = ratio(enc, summary["crypto-only"]["median_mb_per_s"])
    summary["encrypted_over_raw"] = ratio(enc, summary["raw"]["median_mb_per_s"])
    return summary


def _statuses(results: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts


# -- resume after a kill at 50 % ---------------------------------------------------------------------
def wait_for_half(out: Path, half: int, buyer: subprocess.Popen) -> None:
    """Return at a random moment of the block after the first ``half`` are verified: right after
    a block is durable is the kindest moment to kill, so the delay is uniform over one block's
    time (as measured so far in this transfer)."""
    wait_for(lambda: verified_blocks(out) >= 1 or buyer.poll() is not None, 600, "a first block")
    first = time.monotonic()
    wait_for(lambda: verified_blocks(out) >= half or buyer.poll() is not None, 600, "half the blocks")
    per_block_s = (time.monotonic() - first) / max(1, verified_blocks(out) - 1)
    time.sleep(random.uniform(0, per_block_s))  # a kill moment, not a secret


def resume_buyer_killed(world: BenchWorld, out_dir: Path) -> dict[str, Any]:
    node = NodeProcess(world, child_command("_node", "secretstream", world.serve_args()))
    out = out_dir / "resume-buyer.out"
    token = world.token()
    half = world.blocks // 2
    killed: dict[str, int] = {}

    def kill_at_half(buyer: subprocess.Popen) -> None:
        wait_for_half(out, half, buyer)
        buyer.send_signal(signal.SIGKILL)
        killed["verified_at_kill"] = verified_blocks(out)

    try:
        first = run_fetch(world, node, "secretstream", out, token=token, on_start=kill_at_half)
        second = run_fetch(world, node, "secretstream", out, token=token)
    finally:
        node.stop()
        _cleanup(out)
    return _resume_result("buyer SIGKILLed", world, killed, first, second)


def resume_node_killed(world: BenchWorld, out_dir: Path) -> dict[str, Any]:
    node = NodeProcess(world, child_command("_node", "secretstream", world.serve_args()))
    out = out_dir / "resume-node.out"
    half = world.blocks // 2
    killed: dict[str, int] = {}
    holder = {"node": node}

    def kill_node_at_half(buyer: subprocess.Popen) -> None:
        wait_for_half(out, half, buyer)
        holder["node"].kill()
        killed["verified_at_kill"] = verified_blocks(out)
        holder["node"] = NodeProcess(world, child_command("_node", "secretstream", world.serve_args(node.port)))

    try:
        result = run_fetch(world, node, "secretstream", out, retries=30, on_start=kill_node_at_half)
    finally:
        holder["node"].stop()
        _cleanup(out)
    return _resume_result("node SIGKILLed and restarted", world, killed, None, result)


def _resume_result(what: str, world: BenchWorld, killed: dict[str, int], first: dict[str, Any] | None,
                   final: dict[str, Any]) -> dict[str, Any]:
    resent = final["bytes_sent"] - world.size if final.get("bytes_sent") is not None else None
    return {"part": "resume", "kill": what, "outcome": final["outcome"], "block_bytes": world.block_size,
            "blocks": world.blocks, **killed, "sessions": final.get("sessions"), "bytes_sent": final.get("bytes_sent"),
            "resent_bytes": resent, "resent_blocks": round(resent / world.block_size, 3) if resent is not None else None,
            "intervals": final.get("intervals"), "first_run_outcome": first["outcome"] if first else None,
            "target_met": resent is not None and resent <= world.block_size, "load": loadavg()}


def resume_part(world: BenchWorld, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"buyer SIGKILLed": [], "node SIGKILLed and restarted": []}
    for round_no in range(args.rounds):
        for run in (resume_buyer_killed, resume_node_killed):
            result = {**run(world, out_dir), "round": round_no + 1}
            emit(result)
            runs[result["kill"]].append(result)
    summary: dict[str, Any] = {}
    for kill, results in runs.items():
        ok = [r for r in results if r["outcome"] == "ok"]
        summary[kill] = {"resent_blocks": [r["resent_blocks"] for r in results],
                         "max_resent_blocks": max((r["resent_blocks"] for r in ok), default=None),
                         "statuses": _statuses(results),
                         "target_met_in": f"{sum(r['target_met'] for r in ok)}/{len(results)}"}
    return summary


def _cleanup(out: Path) -> None:
    for suffix in ("", ".partial", ".partial.json", ".receipt.json", ".bench.json"):
        out.with_name(out.name + suffix).unlink(missing_ok=True)


# -- handshakes ----------------------------------------------------------------------------------------
def handshake_part(world: BenchWorld, args: argparse.Namespace) -> dict[str, Any]:
    rounds = [handshake_round(world, args.hs_clients, args.hs_ops, args.verify_s, leads=("verify", "redeem")[r % 2])
              for r in range(args.rounds)]
    for r in rounds:
        emit({"part": "handshakes", **r})
    out: dict[str, Any] = {}
    for kind in ("fresh", "resume"):
        out[kind] = {"median_ops_per_s": median([r[kind]["ops_per_s"] for r in rounds if r[kind]["ok"]]),
                     "median_node_cpu_us_per_op": median([r[kind]["node_cpu_us_per_op"] for r in rounds
                                                          if r[kind]["ok"]]),
                     "median_p99_ms": median([r[kind]["p99_ms"] for r in rounds if r[kind]["p99_ms"] is not None]),
                     "statuses": _merge([r[kind]["statuses"] for r in rounds])}
    verify = median([r["ed25519_verify_per_s"] for r in rounds])
    out["ed25519_verify_per_s"] = verify
    out["fresh_over_verify"] = ratio(out["fresh"]["median_ops_per_s"], verify, 4)
    out["resume_over_verify"] = ratio(out["resume"]["median_ops_per_s"], verify, 4)
    return out


def _merge(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_node", "_fetch", "_crypto"):
        raise SystemExit(child_main(argv))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="object size in MiB (2048 for the recorded run)")
    parser.add_argument("--block-size-mb", type=int, default=8, help="block size in MiB (the protocol default 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="transfer,resume,handshakes", help="comma-separated parts to run")
    parser.add_argument("--data-dir", default="/tmp/aimarket-bench", help="where the object is made (reused)")
    parser.add_argument("--out-dir", default="/tmp/aimarket-bench/out", help="where the buyer writes")
    parser.add_argument("--disk-dir", help="also run the encrypted transfer writing here (a disk), as a reference")
    parser.add_argument("--hs-clients", type=int, default=64, help="concurrent buyers in the handshake part")
    parser.add_argument("--hs-ops", type=int, default=2000, help="handshakes per run (fresh, then resume)")
    parser.add_argument("--verify-s", type=float, default=3.0, help="seconds of the Ed25519 verification loop")
    add_common_args(parser, services=False)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.disk_dir:
        Path(args.disk_dir).mkdir(parents=True, exist_ok=True)
    world = BenchWorld.make(Path(args.data_dir), args.size_mb * 2**20, args.block_size_mb * 2**20)
    try:
        gate = wait_for_quiet(args.quiet_load, args.quiet_wait_s)
        record: dict[str, Any] = {"bench": "delivery", "size_bytes": world.size, "block_size": world.block_size,
                                  "rounds": args.rounds, "out_dir": str(out_dir), "load_before": loadavg(), **gate}
        if "transfer" in parts:
            record["transfer"] = transfer_part(world, args, out_dir)
        if "resume" in parts:
            record["resume"] = resume_part(world, args, out_dir)
        if "handshakes" in parts:
            record["handshakes"] = handshake_part(world, args)
        record["load_after"] = loadavg()
        emit(record)
    finally:
        world.close()


if __name__ == "__main__":
    main()
