"""``dreamperp batch`` end to end with the tiny model: a local pool with a failing job, a killed
driver resumed, Ray (a local instance and a ``ray start --head`` cluster with a killed worker),
and bad input reported before anything starts."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from dreamperp.batch import cpu_count, parse_seeds, plan_jobs, read_prompts, thread_env, write_csv
from dreamperp.cli import main
from dreamperp.errors import UsageError
from dreamperp.runs.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "dreamperp" / "configs" / "tiny.yaml")
MAX_STEPS = 10
PROMPTS = "- a red bird\n- prompt: a green cat\n  overrides: {guidance.model: %s}\n- a blue robot\n"


def small(model_dir: Path) -> List[str]:
    """Overrides that make each job a few seconds: tiny renders, few steps, a vertex-coloured mesh, a 2-frame 16 px video."""
    values: Dict[str, object] = {
        "guidance.model": str(model_dir), "data.width": 16, "data.height": 16, "render.num_samples": 16, "scene.levels": 4,
        "scene.log2_table_size": 12, "scene.max_resolution": 64, "trainer.val_size": 16, "trainer.max_steps": MAX_STEPS,
        "trainer.checkpoint_every": 2, "trainer.val_every": MAX_STEPS, "trainer.log_every": 1, "render.albedo_warmup_steps": 4,
        "export.resolution": 16, "export.texture": "false", "export.video_frames": 2, "export.video_size": 16,
    }
    return [f"{k}={v}" for k, v in values.items()]


def threads() -> str:
    """The same CPU threads per job everywhere, so runs of different engines compare exactly."""
    return str(max(1, cpu_count() // 2))


def batch_argv(model_dir: Path, prompts: Path, out: Path, *extra: str) -> List[str]:
    return ["batch", TINY, str(prompts), *small(model_dir), "--out", str(out), "--cpus-per-run", threads(), *extra]


def run_batch(argv: List[str], env: Dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamperp", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def records(out: Path) -> Dict[str, dict]:
    return {r["prompt"]: r for r in map(json.loads, (out / "batch.jsonl").read_text().splitlines())}


def final_state(rec: dict) -> dict:
    return load_checkpoint(Path(rec["run_dir"]) / "ckpts" / f"step-{MAX_STEPS:06d}.pt")


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == MAX_STEPS
    for key in a["scene"]:
        assert torch.equal(a["scene"][key], b["scene"][key]), f"scene tensor {key} differs"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), f"optimizer state {key} differs"


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}) while waiting for {what}: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_at_least(out: Path, step: int):
    def check():
        for ckpt in out.glob("runs/*/ckpts/step-*.pt"):
            if int(ckpt.stem.split("-")[1]) >= step:
                return ckpt.parent.parent
        return None

    return check


# ------------------------------------------------------------------------------- local engine
@pytest.fixture(scope="module")
def local_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """3 jobs, 2 at a time, the middle one with a model folder that does not exist; then the same batch again."""
    base = tmp_path_factory.mktemp("local")
    prompts = base / "prompts.yaml"
    prompts.write_text(PROMPTS % (base / "no-such-model"))
    out = base / "out"
    first = run_batch(batch_argv(tiny_model_dir, prompts, out, "--parallel", "2"))
    before = {name: (out / "jobs" / name).read_text() for name in os.listdir(out / "jobs") if name.endswith(".attempts.jsonl")}
    again = run_batch(batch_argv(tiny_model_dir, prompts, out, "--parallel", "2"))
    return {"out": out, "first": first, "again": again, "attempts_before": before}


def test_local_batch_runs_jobs_records_the_failure_and_skips_finished_runs(local_batch: Dict[str, object]) -> None:
    out, first, again = Path(local_batch["out"]), local_batch["first"], local_batch["again"]  # type: ignore[arg-type]
    assert first.returncode == 1, first.stderr
    recs = records(out)
    assert [r["status"] for r in recs.values()] == ["finished", "failed", "finished"]
    for prompt in ("a red bird", "a blue robot"):
        rec = recs[prompt]
        assert Path(rec["mesh"]).is_file() and Path(rec["mesh"]).stat().st_size > 0 and Path(rec["video"]).is_file()
        assert rec["final_metrics"]["step"] == MAX_STEPS and rec["attempts"] == 1 and rec["exit_code"] == 0
        assert Path(rec["run_dir"]).parent == out / "runs" and (Path(rec["run_dir"]) / "config.yaml").is_file()
    bad = recs["a green cat"]
    assert bad["exit_code"] == 2 and "no-such-model" in bad["error"] and "does not exist" in bad["error"] and "\n" not in bad["error"]
    assert bad["line"] == 2 and bad["overrides"][-1].startswith("guidance.model=")
    # progress: one line per start and finish with the running count
    assert "2 at a time" in first.stderr and "finished a-red-bird-s0-" in first.stderr and "3/3 done" not in first.stderr
    assert "2/3 done, 1 failed" in first.stderr
    with open(out / "summary.csv") as f:
        rows = f.read().splitlines()
    assert rows[0].startswith("job,prompt,seed,status") and len(rows) == 4 and ",failed," in rows[2]
    from PIL import Image

    with Image.open(out / "contact-sheet.png") as im:
        assert im.height >= 16 + 3 * 64 and im.width >= 240 + 4 * 64
        row = im.convert("RGB").crop((240, 16, 240 + 64, 16 + 64))
        assert len(set(row.getdata())) > 10  # a rendered view, not a blank tile
    # again: the failed job runs again (and fails again), the finished ones are not started
    assert again.returncode == 1, again.stderr
    assert "2 of 3 jobs already finished" in again.stderr and "started a-red-bird" not in again.stderr
    for name, text in local_batch["attempts_before"].items():  # type: ignore[union-attr]
        now = (out / "jobs" / name).read_text()
        assert (now == text) == (not name.startswith("a-green-cat")), name
    assert [r["status"] for r in records(out).values()] == ["finished", "failed", "finished"]


def test_killed_driver_resumes_the_interrupted_job_exactly(local_batch: Dict[str, object], tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "one.txt"
    prompts.write_text("# one job\n\na red bird\n")
    out = tmp_path / "out"
    argv = batch_argv(tiny_model_dir, prompts, out, "--parallel", "2")
    driver = subprocess.Popen([sys.executable, "-m", "dreamperp", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run = wait_for(checkpoint_at_least(out, 2), "a first checkpoint", driver)
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    finally:
        if driver.poll() is None:
            driver.kill()
    # The job process got SIGTERM from its dying parent: it saves after its current step and stops.
    log = next((out / "jobs").glob("*.log"))
    wait_for(lambda: "stopped by SIGTERM" in log.read_text(), "the orphaned job to stop")
    stopped_at = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run / "ckpts"))
    assert stopped_at < MAX_STEPS, "the job finished before the driver was killed: nothing was tested"
    again = run_batch(argv)
    assert again.returncode == 0, again.stderr
    assert f"resuming {run} from step-{stopped_at:06d}.pt" in log.read_text()
    rec = records(out)["a red bird"]
    assert rec["status"] == "finished" and rec["attempts"] == 1
    # the same job as the uninterrupted run of the local batch (same config, same folder name)
    full = records(Path(local_batch["out"]))["a red bird"]  # type: ignore[arg-type]
    assert Path(full["run_dir"]).name == run.name
    assert_same_state(final_state(full), final_state(rec))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))


# ------------------------------------------------------------------------------------------ Ray
def need_ray() -> None:
    """Skip without Ray; in CI (.ci/run sets DREAMPERP_CI=1 and installs the ray extra) fail instead."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("DREAMPERP_CI") == "1":
            pytest.fail("Ray is not installed, but CI installs the ray extra: pip install -e '.[dev,ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> Dict[str, str]:
    """This tree first on the path of drivers and of the Ray workers they (or `ray start`) spawn."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, **extra}


# Recent Ray turns token authentication on for `ray start` once a token exists in ~/.ray, and then
# expects drivers that name an address to say so: head and driver both use it here.
HEAD_ENV = {"RAY_AUTH_MODE": "token"}


def test_ray_local_instance_gives_the_local_engines_results(local_batch: Dict[str, object], tiny_model_dir: Path, tmp_path: Path) -> None:
    need_ray()
    prompts = tmp_path / "two.txt"
    prompts.write_text("a red bird\na blue robot\n")
    out = tmp_path / "out"
    result = run_batch(batch_argv(tiny_model_dir, prompts, out, "--engine", "ray"), env=_env())
    assert result.returncode == 0, result.stderr
    assert "on Ray (" in result.stderr and "2/2 done, 0 failed" in result.stderr
    local = records(Path(local_batch["out"]))  # type: ignore[arg-type]
    for prompt, rec in records(out).items():
        assert rec["status"] == "finished" and rec["attempts"] == 1 and Path(rec["mesh"]).is_file()
        assert_same_state(final_state(local[prompt]), final_state(rec))


@pytest.fixture()
def ray_head(tmp_path: Path):
    """A one-node cluster from ``ray start --head`` on 127.0.0.1; stopped afterwards."""
    need_ray()
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    env = _env(**HEAD_ENV)
    start = subprocess.run(
        [ray_cli, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_cluster_retries_a_killed_worker(ray_head: str, local_batch: Dict[str, object], tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "one.txt"
    prompts.write_text("a red bird\n")
    out = tmp_path / "out"
    argv = batch_argv(tiny_model_dir, prompts, out, "--engine", "ray", "--address", ray_head, "--max-retries", "2")
    cmd = [sys.executable, "-m", "dreamperp", *argv]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(**HEAD_ENV))
    try:
        wait_for(checkpoint_at_least(out, 2), "a first checkpoint", driver)
        attempts = next((out / "jobs").glob("*.attempts.jsonl"))
        worker = json.loads(attempts.read_text().splitlines()[0])["pid"]
        assert worker != driver.pid
        os.kill(worker, signal.SIGKILL)  # the Ray worker running the task
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    rec = records(out)["a red bird"]
    assert rec["status"] == "finished" and rec["attempts"] == 2, rec
    assert "attempt 2" in err and "1/1 done, 0 failed" in err
    log = next((out / "jobs").glob("*.log")).read_text()
    assert "stopped by SIGTERM" in log and "resuming" in log  # the first attempt saved, the retry resumed
    full = records(Path(local_batch["out"]))["a red bird"]  # type: ignore[arg-type]
    assert_same_state(final_state(full), final_state(rec))


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_is_reported_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    bad_item = tmp_path / "bad.yaml"
    bad_item.write_text("- a red bird\n- [not, a, prompt]\n")
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("- a red bird\n- prompt: 'unclosed\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("- a red bird\n# a comment\n- prompt: a green cat\n  overrides: {guidance.scael: 3}\n")
    good = tmp_path / "good.txt"
    good.write_text("a red bird\n")
    dup = tmp_path / "dup.txt"
    dup.write_text("a red bird\na blue robot\na red bird\n")
    port = _free_port()  # nothing listens there
    cases = [
        ([str(tmp_path / "missing.txt")], "does not exist"),
        ([str(empty)], "holds no prompts"),
        ([str(bad_item)], "line 2"),
        ([str(bad_yaml)], "not valid YAML"),
        ([str(unknown)], "line 3"),
        ([str(dup)], "line 3 repeats line 1"),
        ([str(good), "--seeds", "0,x"], "--seeds"),
        ([str(good), "--address", "auto"], "--address only applies with --engine ray"),
        ([str(good), "--parallel", "0"], "--parallel"),
        ([str(good), "--engine", "local", "--gpus-per-run", "0.5"], "whole GPUs"),
        ([str(good), "trainer.max_stepz=3"], "line 1"),
    ]
    try:
        import ray  # noqa: F401

        cases.append(([str(good), "--engine", "ray", "--address", f"127.0.0.1:{port}"], f"cannot reach the Ray cluster at 127.0.0.1:{port}"))
        cases.append(([str(good), "--engine", "ray", "--address", "nonsense"], "HOST:PORT"))
    except ImportError:
        cases.append(([str(good), "--engine", "ray"], "pip install 'dreamperp[ray]'"))
    for argv, needle in cases:
        t0 = time.monotonic()
        assert main(["batch", TINY, *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert time.monotonic() - t0 < 30, argv  # bounded, even for an address nobody answers
    with monkeypatch.context() as m:  # without the extra, whether or not it is installed here
        m.setitem(sys.modules, "ray", None)
        assert main(["batch", TINY, str(good), "--engine", "ray", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "pip install 'dreamperp[ray]'" in err and err.count("\n") == 1
    assert not out.exists()
    # the unknown key names the key and the line of its item
    assert main(["batch", TINY, str(unknown), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "guidance.scael" in err and "line 3" in err and "a green cat" in err


def test_prompt_lists_seeds_and_thread_division(tmp_path: Path) -> None:
    for shipped in (ROOT / "assets" / "prompts").iterdir():
        assert read_prompts(shipped), shipped
    janus = read_prompts(ROOT / "assets" / "prompts" / "janus.yaml")
    assert {i.prompt for i in janus} == {f"a {c} {f}" for c in ("red", "green", "blue", "yellow") for f in ("bird", "cat", "robot")}
    assert any(i.overrides == ["guidance.scale=150.0"] for i in janus)
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None) is None
    with pytest.raises(UsageError):
        parse_seeds("1,1")
    assert thread_env(3)["OMP_NUM_THREADS"] == "3" and thread_env(0)["OMP_NUM_THREADS"] == "1"
    # prompts × seeds, a prompt with quotes and commas survives the override grammar, names are stable
    p = tmp_path / "p.txt"
    p.write_text('a "quoted" cat, sitting: on [a] mat\n')
    jobs = plan_jobs(TINY, str(p), [], [0, 3], tmp_path / "out")
    assert [j.seed for j in jobs] == [0, 3] and jobs[0].name.startswith("a-quoted-cat-sitting-on-a-mat-s0-")
    assert jobs == plan_jobs(TINY, str(p), [], [0, 3], tmp_path / "out")
    other = plan_jobs(TINY, str(p), ["guidance.scale=7"], [0], tmp_path / "out")[0]
    assert other.name != jobs[0].name  # a different config is a different run
    longer = plan_jobs(TINY, str(p), ["trainer.max_steps=999"], [0], tmp_path / "out")[0]
    assert longer.name == jobs[0].name  # ... but a longer one continues the same run
    from dreamperp.config import load_config

    cfg = load_config(TINY, jobs[0].argv[1:-2])
    assert cfg.prompt == 'a "quoted" cat, sitting: on [a] mat' and cfg.seed == 0


def test_write_csv_columns_and_line_ends(tmp_path: Path) -> None:
    """Without fields: every scalar key in the order first seen (lists and dicts left out); with fields: those."""
    rows = [{"a": 1, "l": [1], "b": "x"}, {"c": 2.5, "a": 3, "d": {"k": 1}}]
    write_csv(tmp_path / "t.csv", rows, lineterminator="\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b,c\n1,x,\n3,,2.5\n"
    write_csv(tmp_path / "s.csv", rows, ["c", "a"])
    assert (tmp_path / "s.csv").read_bytes() == b"c,a\r\n,1\r\n2.5,3\r\n"


def test_a_tool_runs_its_own_jobs_and_halts_after_a_failure(tmp_path: Path) -> None:
    """The in-process API (tools/bench_janus.py's): make_job's jobs in the tool's own layout, run by
    Batch.run_jobs, each end passed to record(); halt() keeps the queued job from starting. Job.env
    reaches the job's process: a sitecustomize on its PYTHONPATH writes into the job's log."""
    from dreamperp.batch import Batch, make_job
    from dreamperp.config import load_config

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('job env reached the process', flush=True)\n")
    foreign = tmp_path / "runs" / "a"  # refused by `dreamperp train --run-dir` at once: exit 2
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    (tmp_path / "logs").mkdir()
    jobs = []
    for i, name in enumerate(["a", "b"]):
        extra = [f"seed={i}", "prompt=a red bird"]
        jobs.append(make_job(load_config(TINY, extra), index=i, name=name, config=TINY, extra=extra, run_dir=tmp_path / "runs" / name,
                             log_path=tmp_path / "logs" / f"{name}.log", attempts_path=tmp_path / "logs" / f"{name}.attempts.jsonl",
                             env={"PYTHONPATH": str(site)}))
    assert jobs[0].argv == [TINY, "seed=0", "prompt=a red bird", "--run-dir", str(foreign)]
    assert (jobs[1].prompt, jobs[1].seed, jobs[1].max_steps) == ("a red bird", 1, load_config(TINY).trainer.max_steps)

    class Halting(Batch):
        def record(self, job, rec) -> None:  # noqa: ANN001
            self.records[job.name] = rec
            self.halt()

    batch = Halting(jobs, tmp_path, argparse.Namespace(parallel=1, cpus_per_run=1, gpus_per_run=0, max_retries=0))
    batch.run_jobs(jobs)
    assert list(batch.records) == ["a"] and (batch.records["a"]["status"], batch.records["a"]["exit_code"]) == ("failed", 2)
    log = (tmp_path / "logs" / "a.log").read_text()
    assert "job env reached the process" in log and "not empty and not a dreamperp run folder" in log
    assert not (tmp_path / "logs" / "b.attempts.jsonl").exists() and not (tmp_path / "runs" / "b").exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_train_run_dir_refuses_another_run_or_a_foreign_folder(local_batch: Dict[str, object], tiny_model_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    rec = records(Path(local_batch["out"]))["a red bird"]  # type: ignore[arg-type]
    run = tmp_path / "run"
    shutil.copytree(rec["run_dir"], run)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    base = [*small(tiny_model_dir), 'prompt="a red bird"']
    cases = [
        (["--run-dir", str(run), *base, "guidance.scale=7"], "holds a different run: its config.yaml differs in guidance.scale"),
        (["--run-dir", str(foreign), *base], "not empty and not a dreamperp run folder"),
        (["--run-dir", str(run), "--resume", str(run)], "not both"),
    ]
    for argv, needle in cases:
        assert main(["train", TINY, *argv] if "--resume" not in argv else ["train", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    # the same config (a higher max_steps aside) resumes: here there is nothing left to do
    assert main(["train", TINY, *base, "trainer.progress=false", "--run-dir", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
