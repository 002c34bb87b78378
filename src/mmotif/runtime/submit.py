"""Run mmotif as a Ray job: `mmotif submit/status/logs/stop` over the Ray Jobs API.

`mmotif submit --address http://<head>:8265 --config run.yaml` validates the config here,
writes the resolved config as `run.yaml` into a small staging folder that becomes the job's
`working_dir`, and submits the entrypoint `mmotif run --config run.yaml` with the job's
entrypoint resources. Two ways to get mmotif's code onto the nodes (`--runtime-env-mode`):

- `local` (default): the nodes already have mmotif and its dependencies installed (the
  container image of deploy/Dockerfile, or one machine/shared filesystem whose nodes share a
  virtualenv). Only the config travels; nothing is installed when the job starts.
- `package`: the `mmotif` package of this checkout travels too, as a Ray `py_modules` entry
  (source only, a few hundred KB), ahead of any installed copy on `sys.path`; the entrypoint
  is `python -m mmotif.cli run ...`. The nodes still need the dependencies (torch, nle, ray,
  ...): use an image built from deploy/Dockerfile, possibly an older one. `--pip REQ` adds
  requirements through Ray's `pip` runtime env, which needs a package index reachable from
  the nodes (slow; not for offline clusters).

The address is the dashboard's HTTP address (port 8265 by default), not the GCS port.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmotif.config import ConfigError, RunConfig, load_config

RUNTIME_ENV_MODES = ("local", "package")
STAGED_CONFIG = "run.yaml"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
ADDRESS_ENV_VARS = ("MMOTIF_ADDRESS", "RAY_API_SERVER_ADDRESS")


class SubmitError(RuntimeError):
    """A job command that cannot go on; the message says what to check."""


# ----------------------------------------------------------------------------- addresses


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


def default_address() -> str | None:
    for var in ADDRESS_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _unreachable(address: str, why: str) -> SubmitError:
    return SubmitError(
        f"cannot reach the Ray dashboard at {address} ({why}).\n"
        "  check: the cluster is up (`ray status` on the head node, or `ray up deploy/aws.yaml`);\n"
        "  the address is the dashboard's HTTP address (http://<head>:8265 by default), not the "
        "GCS port used by `ray start --address` (6379);\n"
        "  the port is reachable from here: the dashboard binds 127.0.0.1 by default, so use "
        "`ray dashboard deploy/aws.yaml`, an SSH tunnel (ssh -L 8265:127.0.0.1:8265 <head>) or "
        "`kubectl port-forward svc/<cluster>-head-svc 8265`."
    )


def auth_headers() -> dict[str, str]:
    """The bearer token of Ray's token authentication, if this machine has one:
    $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (what
    `ray get-auth-token` prints on the head node). None with RAY_AUTH_MODE=disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.expanduser().read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


AUTH_HINT = ("the cluster uses Ray token authentication: set RAY_AUTH_TOKEN to the cluster's "
             "token (`ray get-auth-token` on the head node) or RAY_AUTH_TOKEN_PATH to a file "
             "holding it")


def probe_dashboard(address: str, timeout_s: float = 5.0) -> dict:
    """GET <address>/api/version; a clear SubmitError when nothing or something else answers."""
    import requests

    url = f"{address}/api/version"
    try:
        r = requests.get(url, timeout=timeout_s, headers=auth_headers())
    except requests.exceptions.Timeout:
        raise _unreachable(address, f"no answer within {timeout_s:g}s") from None
    except requests.exceptions.ConnectionError as err:
        reason = "connection refused" if "refused" in str(err).lower() else f"connection failed: {err}"
        raise _unreachable(address, reason) from None
    except requests.exceptions.RequestException as err:
        raise _unreachable(address, str(err)) from None
    if r.status_code in (401, 403):
        what = "missing" if r.status_code == 401 else "rejected"
        raise SubmitError(f"the Ray dashboard at {address} answered HTTP {r.status_code} "
                          f"(authentication token {what}): {AUTH_HINT}")
    try:
        info = r.json()
    except ValueError:
        info = None
    if r.status_code != 200 or not isinstance(info, dict) or "ray_version" not in info:
        raise SubmitError(
            f"{address} answered (HTTP {r.status_code}) but is not a Ray dashboard: "
            "point --address at the dashboard port (8265 by default) of the head node"
        )
    return info


def connect(address: str | None):
    """A JobSubmissionClient for the dashboard at `address`, after checking it answers."""
    if not address:
        raise SubmitError(
            "no cluster address: pass --address http://<head>:8265 or set "
            f"{' or '.join(ADDRESS_ENV_VARS)}"
        )
    address = normalise_address(address)
    info = probe_dashboard(address)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as err:  # version mismatch, auth, ...
        raise SubmitError(
            f"the Ray dashboard at {address} (Ray {info.get('ray_version')}) refused a Jobs API "
            f"client: {err}"
        ) from None


# ----------------------------------------------------------------------------- submission


def stage_config(cfg: RunConfig, dest: Path) -> Path:
    """Write the resolved config as dest/run.yaml (the job's working_dir)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / STAGED_CONFIG
    path.write_text(cfg.to_yaml())
    return path


CLUSTER_RUNS_ROOT = "~/mmotif"  # a relative run folder lands here, in the head's home


def for_cluster(cfg: RunConfig) -> RunConfig:
    """The config as the job runs it: it joins the cluster it was submitted to, and a relative
    `paths.run_dir` is put under the head node's home: relative to the job's working
    directory it would land in Ray's temporary copy of it, deleted with the job."""
    cfg = cfg.model_copy(deep=True)
    if cfg.cluster.address is None:
        cfg.cluster.address = "auto"  # the Jobs API sets RAY_ADDRESS for the entrypoint
    run_dir = cfg.paths.run_dir
    if not run_dir.is_absolute() and not str(run_dir).startswith("~"):
        cfg.paths.run_dir = Path(CLUSTER_RUNS_ROOT) / run_dir
    return cfg


def package_dir() -> Path:
    import mmotif

    return Path(mmotif.__file__).resolve().parent


def build_runtime_env(mode: str, working_dir: Path, pip: list[str] | tuple[str, ...] = (),
                      env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    if mode not in RUNTIME_ENV_MODES:
        raise SubmitError(f"--runtime-env-mode must be one of {', '.join(RUNTIME_ENV_MODES)}, got {mode!r}")
    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "env_vars": {"PYTHONUNBUFFERED": "1", **(env_vars or {})},
    }
    if mode == "package":
        env["py_modules"] = [str(package_dir())]
        env["excludes"] = ["__pycache__/", "*.pyc"]
    if pip:
        env["pip"] = {"packages": list(pip), "pip_check": False}
    return env


def entrypoint_for(mode: str, config_name: str = STAGED_CONFIG) -> str:
    if mode == "package":  # the uploaded package, whatever `mmotif` script the node has
        return f"python -m mmotif.cli run --config {config_name}"
    return f"mmotif run --config {config_name}"


def new_submission_id(cfg: RunConfig) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.name)[:40]
    return f"mmotif-{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class Submitted:
    submission_id: str
    address: str
    entrypoint: str
    runtime_env: dict[str, Any]


def submit_run(address: str | None, cfg: RunConfig, *, mode: str = "local",
               entrypoint_num_cpus: float = 0.0, entrypoint_num_gpus: float = 0.0,
               entrypoint_resources: dict[str, float] | None = None,
               pip: list[str] | tuple[str, ...] = (), submission_id: str | None = None,
               env_vars: dict[str, str] | None = None, preset: str | None = None) -> Submitted:
    client = connect(address)
    cfg = for_cluster(cfg)
    entrypoint = entrypoint_for(mode)
    sid = submission_id or new_submission_id(cfg)
    kwargs: dict[str, Any] = {}
    if entrypoint_num_cpus:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus:
        kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
    if entrypoint_resources:
        kwargs["entrypoint_resources"] = entrypoint_resources
    # submit_job uploads working_dir/py_modules to the cluster's GCS before it returns
    with tempfile.TemporaryDirectory(prefix="mmotif-submit-") as staging:
        stage_config(cfg, Path(staging))
        runtime_env = build_runtime_env(mode, Path(staging), pip, env_vars)
        try:
            sid = client.submit_job(
                entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env,
                metadata={"mmotif_run": cfg.name, "mmotif_preset": preset or "",
                          "mmotif_runtime_env_mode": mode},
                **kwargs,
            )
        except Exception as err:
            raise SubmitError(
                f"the cluster at {normalise_address(address)} rejected the job: {err}"
            ) from None
    return Submitted(sid, normalise_address(address), entrypoint, runtime_env)


# ----------------------------------------------------------------------------- job queries


def job_info(address: str | None, job: str) -> dict[str, Any]:
    client = connect(address)
    try:
        info = client.get_job_info(job)
    except Exception as err:
        raise SubmitError(f"no job {job!r} at {normalise_address(address)}: {err}") from None
    d = info.model_dump() if hasattr(info, "model_dump") else info.dict()
    d["status"] = str(getattr(info.status, "value", info.status))
    return d


async def _tail(client, job: str, out) -> None:
    async for chunk in client.tail_job_logs(job):
        out.write(chunk)
        out.flush()


def print_logs(address: str | None, job: str, follow: bool = False, out=None) -> str:
    """Print a job's logs; with `follow`, stream them until the job ends. Returns its status."""
    out = out or sys.stdout
    client = connect(address)
    try:
        if follow:
            asyncio.run(_tail(client, job, out))
        else:
            out.write(client.get_job_logs(job))
            out.flush()
        return str(getattr(client.get_job_status(job), "value", ""))
    except Exception as err:
        raise SubmitError(f"cannot read the logs of job {job!r} at {normalise_address(address)}: {err}") from None


def stop(address: str | None, job: str, wait_s: float = 0.0) -> str:
    client = connect(address)
    try:
        client.stop_job(job)
        status = str(client.get_job_status(job).value)
        deadline = time.monotonic() + wait_s
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            status = str(client.get_job_status(job).value)
    except Exception as err:
        raise SubmitError(f"cannot stop job {job!r} at {normalise_address(address)}: {err}") from None
    return status


# ----------------------------------------------------------------------------- CLI


def _fail(err: Exception) -> int:
    print(f"mmotif: {err}", file=sys.stderr)
    return 2


def cmd_submit(args) -> int:
    try:
        preset = args.preset or ("local" if args.config is None else "paper")
        cfg = load_config(args.config, preset)
        resources = json.loads(args.entrypoint_resources) if args.entrypoint_resources else None
        env_vars = dict(kv.split("=", 1) for kv in args.env) if args.env else None
        sub = submit_run(
            args.address, cfg, mode=args.runtime_env_mode,
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            entrypoint_resources=resources, pip=args.pip or (),
            submission_id=args.submission_id, env_vars=env_vars, preset=preset,
        )
    except (ConfigError, SubmitError) as err:
        return _fail(err)
    except (json.JSONDecodeError, ValueError) as err:
        return _fail(ValueError(f"bad --entrypoint-resources/--env: {err}"))
    print(f"submitted job {sub.submission_id} to {sub.address}")
    print(f"  entrypoint: {sub.entrypoint}  (runtime env mode: {args.runtime_env_mode})")
    print(f"  mmotif status {sub.submission_id} --address {sub.address}")
    print(f"  mmotif logs {sub.submission_id} --follow --address {sub.address}")
    print(f"  dashboard: {sub.address}/#/jobs")
    if not args.wait:
        return 0
    try:
        status = print_logs(sub.address, sub.submission_id, follow=True)
    except SubmitError as err:
        return _fail(err)
    print(f"job {sub.submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args) -> int:
    try:
        info = job_info(args.address, args.job)
    except SubmitError as err:
        return _fail(err)
    if args.json:
        print(json.dumps(info, default=str, indent=2))
        return 0
    print(f"{args.job}: {info['status']}")
    for key in ("message", "entrypoint", "driver_node_id", "start_time", "end_time"):
        if info.get(key) not in (None, ""):
            value = info[key]
            if key.endswith("_time"):
                value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value / 1000))
            print(f"  {key}: {value}")
    return 0


def cmd_logs(args) -> int:
    try:
        print_logs(args.address, args.job, follow=args.follow)
    except SubmitError as err:
        return _fail(err)
    return 0


def cmd_stop(args) -> int:
    try:
        status = stop(args.address, args.job, wait_s=args.wait)
    except SubmitError as err:
        return _fail(err)
    print(f"{args.job}: {status}")
    return 0
