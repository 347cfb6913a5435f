#!/usr/bin/env bash
# A real SLURM test of profiles/slurm: start a one-node SLURM cluster on this machine (Debian's
# slurm-wlm and munge, daemons started by hand: no systemd needed), run the tiny study of
# tests/slurm/config.yaml once locally and once with `--profile profiles/slurm` (plus the test
# cluster's overrides, tests/slurm/profile.yaml), check that the jobs went through sbatch and that
# both runs computed the same numbers, then stop the daemons it started (by PID). The local run's
# config has every `shards` key removed: a sharded study's tables from its shard and gather jobs
# under SLURM must equal one unsharded `intervene` job's.
#
#   bash .ci/slurm-test.sh      # as root, with apt-get; otherwise it prints why it skips
#
# Everything lives in one temporary folder (munge key and socket, slurm.conf, state, logs, the two
# runs); the only file written outside it is /etc/slurm/slurm.conf, one `Include` line for the
# job steps (the plugin's `srun` drops SLURM_CONF), removed at exit. Every wait is bounded: the
# whole script fails rather than run past SLURM_TEST_LIMIT_S (default 900 s) plus clean-up. SLURM_TEST_KEEP=1
# keeps the temporary folder (logs, both runs) for a look afterwards.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SNAKEMAKE="$REPO/.venv/bin/snakemake"
PYTHON="$REPO/.venv/bin/python"
LIMIT_S="${SLURM_TEST_LIMIT_S:-900}" # + at most ~70 s to stop everything: it took 297 s on an idle 2-core machine before the sharded study
START=$SECONDS
DEADLINE=$((SECONDS + LIMIT_S))
MARKER="# written by knockout .ci/slurm-test.sh"
ETC_CONF=/etc/slurm/slurm.conf

skip() { echo "slurm test skipped: $*"; exit 0; }
fail() { echo "slurm test FAILED: $*" >&2; exit 1; }
left() { # seconds left before the deadline, at least 1 (timeout 0 would mean no limit)
    local s=$((DEADLINE - SECONDS))
    ((s > 0)) || fail "ran out of time (${LIMIT_S} s)"
    echo "$s"
}
step() { echo "[$((SECONDS - START))s] $*"; }

[[ "$(id -u)" == 0 ]] || skip "not root (it installs slurm-wlm and munge and runs their daemons)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get (needs Debian's slurm-wlm and munge)"
[[ -x "$SNAKEMAKE" ]] || fail "$SNAKEMAKE not found: run 'bash setup.sh' first"
if [[ -e "$ETC_CONF" ]] && ! grep -qxF "$MARKER" "$ETC_CONF"; then
    skip "$ETC_CONF exists: a real SLURM installation, not touched"
fi

# --- 1. packages -------------------------------------------------------------------------------
packages=()
for tool in slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$tool" >/dev/null 2>&1 || { packages+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || packages+=(munge)
[[ -d /usr/share/datasets/fashion-mnist ]] || packages+=(dataset-fashion-mnist)

T="$(mktemp -d /tmp/knockout-slurm.XXXXXX)"
chmod 755 "$T" # munged wants its socket's folders searchable by all
PIDS=()        # daemons started here, stopped at exit in reverse order
LOCAL_PID=""   # the local run while it runs (in the background)
POLICY_RC=""   # a policy-rc.d created here (keeps apt from starting the daemons itself)

stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 25); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
stop_leftovers() { # processes still working in $T (SLURM job steps orphaned by a cancelled run)
    local dir pid pids=() i
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" ]] && continue
        case "$(readlink "$dir/cwd" 2>/dev/null)" in "$T" | "$T"/*) pids+=("$pid") ;; esac
    done
    ((${#pids[@]})) || return 0
    kill "${pids[@]}" 2>/dev/null
    for i in $(seq 15); do kill -0 "${pids[@]}" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "${pids[@]}" 2>/dev/null || true
}
cleanup() {
    local rc=$? i
    set +e
    if ((${#PIDS[@]})) && [[ -n "${SLURM_CONF:-}" ]]; then
        # jobs still queued or running (a failed or timed-out run): cancel them while slurmd is up
        timeout 15 scancel --quiet --user=root 2>/dev/null
        for i in $(seq 15); do
            [[ -z "$(timeout 5 squeue -h -t PD,R,CG -o %i 2>/dev/null)" ]] && break
            sleep 1
        done
    fi
    [[ -n "$LOCAL_PID" ]] && stop_pid "$LOCAL_PID" # timeout passes the signal on to snakemake
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    stop_leftovers
    [[ -n "$POLICY_RC" ]] && rm -f "$POLICY_RC"
    [[ -e "$ETC_CONF" ]] && grep -qxF "$MARKER" "$ETC_CONF" && rm -f "$ETC_CONF"
    if ((rc != 0)) && [[ -d "$T" ]]; then # show what the daemons said, then clean up anyway
        for log in "$T"/log/slurmctld.log "$T"/log/slurmd.log "$T"/B/slurm.log; do
            [[ -s "$log" ]] && { echo "--- last lines of $log"; tail -n 25 "$log"; } >&2
        done
    fi
    if [[ -n "${SLURM_TEST_KEEP:-}" ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ((${#packages[@]})); then
    step "installing ${packages[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod 755 "$POLICY_RC"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout "$(left)" apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$T/apt.log" 2>&1; then
        timeout "$(left)" apt-get update -qq >>"$T/apt.log" 2>&1 || true
        timeout "$(left)" apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$T/apt.log" 2>&1 ||
            { tail -n 20 "$T/apt.log" >&2; fail "apt-get install ${packages[*]} failed"; }
    fi
    [[ -n "$POLICY_RC" ]] && rm -f "$POLICY_RC" && POLICY_RC=""
fi

# --- 2. a one-node cluster: munged, slurmctld, slurmd ------------------------------------------
step "starting munged, slurmctld and slurmd in $T"
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/log" "$T/A" "$T/B"
chmod 755 "$T/munge"
head -c 1024 /dev/urandom >"$T/munge/munge.key" # a private key: /etc/munge is not touched
chmod 600 "$T/munge/munge.key"
munged --foreground --socket="$T/munge/munge.sock" --key-file="$T/munge/munge.key" \
    --pid-file="$T/munge/munged.pid" --seed-file="$T/munge/munged.seed" \
    --log-file="$T/log/munged.log" >"$T/log/munged.out" 2>&1 &
PIDS+=($!)

# two free TCP ports (slurmctld, slurmd), so a SLURM already on the usual ports does not matter
read -r CTLD_PORT SLURMD_PORT < <("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
CPUS=$(nproc)
((CPUS >= 2)) || CPUS=2 # two jobs at once at least; config_overrides accepts more than there are

cat >"$T/slurm.conf" <<EOF
# one node on 127.0.0.1, one partition "debug"; no accounting (no slurmdbd), no cgroups
ClusterName=knockoutci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
# two GPUs for SLURM's bookkeeping only (the study runs on the CPU): profiles/slurm's gpu: 1
# requests are scheduled as written, on a machine without one (a GPU needs a device file)
for dev in null zero; do echo "NodeName=localhost Name=gpu File=/dev/$dev"; done >"$T/gres.conf"
export SLURM_CONF="$T/slurm.conf"
# the plugin's job step runs `srun` with SLURM_* variables removed, SLURM_CONF included; on a real
# cluster srun then reads /etc/slurm/slurm.conf, so that is where this cluster's is included
mkdir -p /etc/slurm
printf '%s\nInclude %s\n' "$MARKER" "$T/slurm.conf" >"$ETC_CONF"

for i in $(seq 50); do [[ -S "$T/munge/munge.sock" ]] && break; sleep 0.2; done
[[ -S "$T/munge/munge.sock" ]] || fail "munged did not start ($(cat "$T/log/munged.out"))"
slurmctld -D -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$T/log/slurmd.out" 2>&1 &
PIDS+=($!)
state=""
for i in $(seq 120); do # 60 s at most
    state="$(timeout 5 sinfo -h -n localhost -o %t 2>/dev/null || true)"
    [[ "$state" == idle ]] && break
    sleep 0.5
done
[[ "$state" == idle ]] || fail "the node is not idle after 60 s (state '$state'; $(sinfo -R -h 2>&1))"
step "cluster up: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %G %t')"

# --- 3. the tiny study, locally (A) and through SLURM (B) --------------------------------------
# A (local) runs every study unsharded: the same config without its studies' `shards` keys
"$PYTHON" - "$REPO/tests/slurm/config.yaml" "$T/A/config.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
sharded = [name for name, study in config["interventions"].items() if study.pop("shards", 1) != 1]
assert sharded, "tests/slurm/config.yaml has no sharded study"
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
cp "$REPO/tests/slurm/config.yaml" "$T/B/config.yaml"
mkdir -p "$T/profile"
"$PYTHON" - "$REPO/profiles/slurm/config.yaml" "$REPO/tests/slurm/profile.yaml" "$T/profile/config.yaml" <<'EOF'
# the override profile: tests/slurm/profile.yaml + profiles/slurm's default-resources with the
# test cluster's partition (a later profile replaces a whole key, so it must be repeated)
import sys, yaml
slurm, override, out = sys.argv[1:]
profile = yaml.safe_load(open(override))
profile["default-resources"] = dict(yaml.safe_load(open(slurm))["default-resources"], slurm_partition="debug")
yaml.safe_dump(profile, open(out, "w"), sort_keys=False)
EOF

# The two runs at once: SLURM jobs spend most of their time waiting for the scheduler and the
# status checks, so the local run costs little extra time. Both leave out the analysis notebooks
# (papermill renderings of the tables, which are compared): a SLURM job each, minutes on a busy
# machine, and nothing the profile does differently for them. `timeout -k`: snakemake waits for
# running jobs after a TERM, so a KILL follows 15 s later.
RUN=(-s "$REPO/Snakefile" --omit-from notebook)
step "local run (--cores 2) and SLURM run (--profile profiles/slurm --profile tests/slurm/profile.yaml)"
(cd "$T/A" && exec timeout -k 15 "$(left)" "$SNAKEMAKE" "${RUN[@]}" --cores 2 >"$T/A/snakemake.log" 2>&1) &
LOCAL_PID=$!
slurm_rc=0
(cd "$T/B" && exec timeout -k 15 "$(left)" "$SNAKEMAKE" "${RUN[@]}" \
    --profile "$REPO/profiles/slurm" --profile "$T/profile" >"$T/B/slurm.log" 2>&1) || slurm_rc=$?
((slurm_rc == 0)) || { tail -n 40 "$T/B/slurm.log" >&2; fail "the SLURM run failed (exit $slurm_rc)"; }
step "SLURM run done"
local_rc=0
wait "$LOCAL_PID" || local_rc=$?
LOCAL_PID=""
((local_rc == 0)) || { tail -n 30 "$T/A/snakemake.log" >&2; fail "the local run failed (exit $local_rc)"; }
step "local run done"

# --- 4. checks ---------------------------------------------------------------------------------
step "checking"
timeout 30 squeue -h --states=all -o '%i|%T|%k' >"$T/jobs.txt"
timeout 30 scontrol show job -o >"$T/jobs.detail" || true
"$PYTHON" - "$T" <<'EOF'
import json, re, sys
from pathlib import Path

import pandas as pd
import torch
import yaml

T = Path(sys.argv[1])
A, B = T / "A", T / "B"
TIMING = {"seconds", "images_per_second", "seconds_per_epoch"}  # the only values allowed to differ
# ... and where a job ran: results/provenance.json's machine, torch threads and git state (the
# repository may change between the two runs where people work in it)
WHERE = {"provenance.json": {"platform", "device", "git"}}
RENDERED = ("notebooks", "figures")  # executed notebooks and PNG/PDF figures carry dates: not compared
PER_SEED = (".csv", ".per_class.csv", ".confusion.csv", ".examples.parquet")  # an evaluated study's tables
# The studies B (SLURM) runs in shards and A (local) in one intervene job each, and their shard counts.
CONFIG = yaml.safe_load((B / "config.yaml").read_text())
SHARDS = {name: study["shards"] for name, study in CONFIG["interventions"].items() if study.get("shards", 1) != 1}
problems = []

# Every SLURM job of the cluster (it is fresh: only this run's), with its state and rule/group.
jobs = [line.split("|", 2) for line in (T / "jobs.txt").read_text().split("\n") if line]
if not jobs:
    problems.append("squeue lists no jobs: nothing went through sbatch")
kinds, kind_of = {}, {}
for jobid, state, comment in jobs:
    if state != "COMPLETED":
        problems.append(f"SLURM job {jobid} ({comment}) is {state}")
    # the plugin's log: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log or group_<group>_.../
    logs = list((B / ".snakemake/slurm_logs").glob(f"*/**/{jobid}.log"))
    if not logs:
        problems.append(f"SLURM job {jobid} ({comment}) left no log in .snakemake/slurm_logs")
        continue
    kind = logs[0].relative_to(B / ".snakemake/slurm_logs").parts[0]  # rule_train, group_interventions_...
    kind_of[jobid] = kind
    kinds[kind] = kinds.get(kind, 0) + 1
for kind in ["rule_download", "rule_prepare", "rule_train", "rule_baselines", "rule_aggregate"]:
    if kind not in kinds:
        problems.append(f"no SLURM job for {kind}")
groups = [k for k in kinds if k.startswith("group_interventions")]
if not groups:
    problems.append("unit_stats and intervene did not run as a group job")
for kind in ["rule_unit_stats", "rule_intervene"]:
    if kind in kinds:
        problems.append(f"{kind} ran as a job of its own, not in the group")
# a sharded study: one SLURM job per shard and seed (not grouped) and one gather per seed
expected = {"rule_intervene_shard": sum(SHARDS.values()) * len(CONFIG["seeds"]), "rule_gather": len(SHARDS) * len(CONFIG["seeds"])}
for kind, n in expected.items():
    if kinds.get(kind, 0) != n:
        problems.append(f"{kinds.get(kind, 0)} {kind} jobs via sbatch, expected {n} (shards {SHARDS})")

# What the profile asked for reached sbatch: one GPU per train job, per group job (not one per
# grouped job: the group's jobs run one after another) and per shard or plan job (not grouped);
# none for gather, aggregate and the other bookkeeping jobs.
GPU_RULES = {"rule_train", "rule_intervene_shard", "rule_probe_shard", "rule_shard_plan", "rule_unit_values"}
details = {m["id"]: line for line in (T / "jobs.detail").read_text().splitlines()
           if (m := re.match(r"JobId=(?P<id>\d+)", line))}
for jobid, kind in kind_of.items():
    wants_gpu = kind in GPU_RULES or kind.startswith("group_")
    has_gpu = re.search(r"TresPerJob=gres:gpu:1(\s|$)", details.get(jobid, "")) is not None
    if wants_gpu != has_gpu:
        problems.append(f"SLURM job {jobid} ({kind}): one GPU asked {has_gpu}, expected {wants_gpu}")

# ... and the runtime and memory of every job (profiles/slurm's default-resources and set-resources).
for jobid, kind in kind_of.items():
    line = details.get(jobid, "")
    if "TimeLimit=UNLIMITED" in line or "TimeLimit=" not in line:
        problems.append(f"SLURM job {jobid} ({kind}) has no time limit: runtime did not reach sbatch")
    if not re.search(r"MinMemoryNode=[1-9]", line):
        problems.append(f"SLURM job {jobid} ({kind}) asked for no memory: mem_mb did not reach sbatch")

# The outputs: every table, json, parquet and checkpoint of A exists in B with the same content
# (a sharded study's shards/ folder aside: B's alone, checked below).
def files(root):
    return sorted(p.relative_to(root) for p in (root / "results").rglob("*")
                  if p.is_file() and p.parts[len(root.parts) + 1] not in ("logs", "benchmarks")
                  and "shards" not in p.relative_to(root).parts)

def drop_shards(config):  # the one key the two runs' configs differ in (provenance.json records them)
    for study in (config or {}).get("interventions", {}).values():
        study.pop("shards", None)

def drop_timing(obj):
    if isinstance(obj, dict):
        return {k: drop_timing(v) for k, v in obj.items() if k not in TIMING}
    return obj

fa, fb = files(A), files(B)
equal = set()  # the files found equal
if fa != fb:
    problems.append(f"different files: only local {sorted(set(fa) - set(fb))}, only SLURM {sorted(set(fb) - set(fa))}")
compared = 0
for rel in fa:
    a, b = A / rel, B / rel
    if not b.exists() or rel.parts[1] in RENDERED:
        continue
    try:
        if rel.suffix == ".csv":
            x, y = pd.read_csv(a), pd.read_csv(b)
            x, y = x.drop(columns=[c for c in x if c in TIMING]), y.drop(columns=[c for c in y if c in TIMING])
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        elif rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
        elif rel.suffix == ".json":
            x, y = (drop_timing(json.loads(p.read_text())) for p in (a, b))
            for key in WHERE.get(rel.name, ()):
                x.pop(key, None), y.pop(key, None)
            if rel.name == "provenance.json":
                drop_shards(x.get("config")), drop_shards(y.get("config"))
            assert x == y, f"differs in {sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))}"
        elif rel.suffix == ".pt":
            x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            sx, sy = (x.get("state_dict", x), y.get("state_dict", y)) if isinstance(x, dict) else (x, y)
            if isinstance(sx, dict):
                assert sx.keys() == sy.keys(), "different keys"
                for k in sx:
                    if torch.is_tensor(sx[k]):
                        assert torch.equal(sx[k], sy[k]), f"tensor {k} differs"
            else:
                assert torch.equal(sx, sy), "tensor differs"
        else:
            assert a.read_bytes() == b.read_bytes(), "bytes differ"
        compared += 1
        equal.add(rel)
    except AssertionError as e:
        problems.append(f"{rel}: {str(e).splitlines()[0] if str(e) else 'differs'}")

# The sharded studies: B's per-seed tables came from its shards (one file per shard and seed, a
# gather log), A's from one intervene job; each of the four tables per seed compared equal above.
sharded_tables = 0
for name, n in SHARDS.items():
    model = CONFIG["interventions"][name]["model"]
    for seed in CONFIG["seeds"]:
        got = sorted(p.name for p in (B / f"results/interventions/{name}/{model}/shards/seed{seed}").glob("shard*.pt"))
        if got != [f"shard{i}.pt" for i in range(n)]:
            problems.append(f"{name} seed {seed}: the SLURM run's shard files are {got}, expected {n}")
        if (A / f"results/interventions/{name}/{model}/shards").exists():
            problems.append(f"{name}: the local run was sharded too (it should be one intervene job per seed)")
        if not (A / f"results/logs/interventions/{name}/{model}/seed{seed}.log").exists():
            problems.append(f"{name} seed {seed}: no log of a local intervene job")
        if not (B / f"results/logs/shards/{name}/{model}/seed{seed}.gather.log").exists():
            problems.append(f"{name} seed {seed}: no gather log in the SLURM run")
        for ext in PER_SEED:
            rel = Path(f"results/interventions/{name}/{model}/seed{seed}{ext}")
            if rel in equal:
                sharded_tables += 1
            else:
                problems.append(f"{rel}: not compared equal (missing in a run, or different)")

accuracy = {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["test_accuracy"]
            for p in sorted((B / "results/models").glob("*/seed*/metrics.json"))}
if problems:
    print("\n".join(f"  - {p}" for p in problems[:30]), file=sys.stderr)
    sys.exit(1)
summary = ", ".join(f"{n} {k.split('_', 1)[1] if k.startswith('rule_') else 'group ' + k.split('_')[1]}"
                    for k, n in sorted(kinds.items()))
print(f"{len(jobs)} jobs via sbatch, all COMPLETED, each with its SLURM log ({summary})")
print(f"outputs equal: {compared} files of the SLURM run match the local run (timing columns aside)")
print(f"sharded = unsharded: {sharded_tables} per-seed tables of {', '.join(f'{k} ({n} shards)' for k, n in SHARDS.items())}"
      " from SLURM's intervene_shard + gather jobs equal the local unsharded intervene's")
print("test accuracy " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
EOF
step "slurm test passed"
