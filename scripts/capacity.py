#!/usr/bin/env python3
"""keygate's capacity model (docs/capacity.md): unit costs measured on this machine, the
model that turns them into replicas, Redis shards and Postgres load, and a check of the
model against a run here.

  scripts/capacity.py costs [--out FILE]        unit costs in Redis and Postgres, measured
                                                (a private redis-server; a schema of its own
                                                in $KEYGATE_TEST_POSTGRES_URL, dropped after)
  scripts/capacity.py model [--decisions N --accounts K --keys KEYS --replicas R ...]
                                                what N decisions/s take (docs/capacity.md)
  scripts/capacity.py run [--bin-dir DIR] [--lease-percent P --lease-ms MS ...]
                                                a keygate under load on a private Redis:
                                                predicted and measured renewals/s and the
                                                decisions/s at which Redis' CPU saturates

Only CPU time is measured (/proc: user + system of each process), never wall time alone:
the machine is shared. Needs python3, redis-server, redis-cli, psql.
"""
import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
COSTS = os.path.join(ROOT, "docs", "capacity-costs.json")


# ---------------------------------------------------------------- the model

def low_water(size):
    """src/ratelimit/lease.rs: a renewal starts when an eighth of the slice is left."""
    return max(size // 8, 1)


def slice_size(limit, share):
    """src/ratelimit/lease.rs LeaseSettings::size: share of the limit, rounded up, >= 1."""
    return min(max(math.ceil(limit * share), 1), max(limit, 1))


def admissions_per_renewal(rate, size, period_s):
    """One subject on one replica admitted `rate` a second: admissions per renewal round
    trip. A renewal starts when the slice is down to its low water (size - low admissions
    after the last one) or at the first admission past half the lease period (rate x P/2
    + 1 admissions). Slice size is the parameter: adaptive slices change `size` only."""
    return max(1.0, min(size - low_water(size), rate * period_s / 2 + 1))


def renewals(rate, size, period_s):
    """Renewal round trips a second for one (subject, replica) admitted `rate` a second."""
    return 0.0 if rate <= 0 else rate / admissions_per_renewal(rate, size, period_s)


def zipf(n):
    """keygate-bench's key choice: Zipf, s = 1, over n ranks."""
    h = sum(1.0 / (i + 1) for i in range(n))
    return [1.0 / (i + 1) / h for i in range(n)]


def predict_run(decisions, keys, size, period_s, rounds, keygate_seconds):
    """Renewals a second in a `keygate-bench load --target` run: one replica, `keys` keys
    in as many accounts chosen by Zipf, at `decisions` a second while keygate is measured;
    each of its rounds starts every subject with a renewal (the floor's rounds leave them
    idle, and idle slices are released)."""
    steady = sum(renewals(decisions * p, size, period_s) for p in zipf(keys))
    # The release task (every half period) frees slices idle half a period: a floor round
    # of a period or more leaves every subject released, and the next round renews each.
    round_s = keygate_seconds / rounds
    starts = keys * rounds / keygate_seconds if round_s >= period_s else 0.0
    return steady + starts


def model(a):
    """What `a.decisions` a second over `a.accounts` accounts and `a.replicas` replicas takes."""
    c = a.costs
    per_account = a.decisions / a.accounts
    # Each account's calls reach `spread` replicas (all of them behind a round-robin
    # balancer; 1 when the edge hashes accounts to replicas).
    spread = a.replicas if a.spread == "all" else 1
    per_pair = per_account / spread
    size = slice_size(a.limit, a.lease_percent / 100)
    period = a.lease_ms / 1000
    renew = a.accounts * spread * renewals(per_pair, size, period)
    exact = a.decisions * a.exact_share
    redis_cpu = renew * c["redis_us_per_renewal"] + exact * c["redis_us_per_exact"]
    shards = redis_cpu / 1e6 / a.redis_busy
    keygate_cpu = a.decisions * c["keygate_us_per_decision"]
    cores = keygate_cpu / 1e6 / a.keygate_busy
    replicas_needed = math.ceil(cores / a.cores_per_replica)
    # Keys each replica keeps hot: those called within the cache's life, up to its capacity.
    keys_per_replica = min(a.keys if a.spread == "all" else a.keys / a.replicas, a.cache_capacity)
    replica_mib = (keys_per_replica * c["bytes_per_cached_key"]
                   + a.accounts / (1 if a.spread == "all" else a.replicas) * c["bytes_per_subject_in_process"]) / 2**20
    redis_gib = a.accounts * c["redis_bytes_per_subject"] / 2**30
    # Usage analytics: each replica flushes, every flush interval, a key's rows (its minute,
    # hour and day) for each key it decided in that interval, and its account's. Keys are
    # called uniformly (Poisson): the (key, replica) pairs of an interval.
    calls_per_key = a.decisions * a.flush_s / a.keys
    pairs = a.keys * spread * (1 - math.exp(-calls_per_key / spread))
    calls_per_account = a.decisions * a.flush_s / a.accounts
    account_pairs = a.accounts * spread * (1 - math.exp(-calls_per_account / spread))
    usage_rows = (pairs + account_pairs) * a.rows_per_key / a.flush_s
    # Credits: per key and replica, one group commit at a time (calls waiting meanwhile
    # share the next one).
    credit_calls = a.decisions * a.credit_share
    credit_commits = min(credit_calls, a.credit_keys * spread * 1000 / c["credit_commit_ms"])
    # Cache misses: a key's record is read again when its last read on this replica is
    # older than --cache-ttl-seconds (30), so a call misses with probability exp(-λ ttl),
    # λ its key's calls a second on this replica (the cache's capacity is left out).
    per_key_replica = a.decisions / a.keys / spread
    reads = a.decisions * math.exp(-per_key_replica * a.cache_ttl_s)
    pg_cpu = (usage_rows * c["pg_us_per_usage_row"] + credit_commits * c["pg_us_per_credit_commit"]
              + reads * c["pg_us_per_key_read"])
    pg_cores = pg_cpu / 1e6 / a.postgres_busy
    walls = {
        "keygate replicas (CPU)": replicas_needed / a.replicas,
        "Redis shards (one core each)": shards / max(a.redis_shards, 1),
        "Postgres primary (CPU)": pg_cores / a.postgres_cores,
    }
    return {
        "per account /s": per_account,
        "per (account, replica) /s": per_pair,
        "slice": size,
        "admissions per renewal": admissions_per_renewal(per_pair, size, period),
        "renewals /s": renew,
        "renewals per 1,000 decisions": 1000 * renew / a.decisions,
        "Redis CPU cores": redis_cpu / 1e6,
        f"Redis shards at {a.redis_busy:.0%} busy": math.ceil(shards),
        "keygate CPU cores": keygate_cpu / 1e6,
        f"keygate replicas of {a.cores_per_replica} cores at {a.keygate_busy:.0%} busy": replicas_needed,
        "memory per replica MiB (cache + limits)": replica_mib,
        "Redis memory GiB (high-rate subjects)": redis_gib,
        "usage rows /s into Postgres": usage_rows,
        "credit commits /s": credit_commits,
        "key reads /s (cache misses)": reads,
        "Postgres CPU cores for key reads": reads * c["pg_us_per_key_read"] / 1e6,
        "Postgres CPU cores": pg_cpu / 1e6,
        "load against what is given (>1: a wall)": walls,
        # Where each is reached, scaling N with the same shape (renewals grow at most
        # linearly with N, so this is a lower bound for Redis).
        "decisions/s at each wall": {k: a.decisions / v for k, v in walls.items() if v > 0},
        "first wall": max(walls, key=walls.get),
    }


# ---------------------------------------------------------------- processes and Redis

def cpu_us(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK * 1e6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server (no persistence), so nothing else moves its counters."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kg-capacity-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL)
        for _ in range(200):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *map(str, args)], capture_output=True,
                              text=True, check=True).stdout.strip()

    def evalsha(self):
        """(calls, usec) of EVALSHA and EVAL from INFO commandstats."""
        calls = usec = 0
        for line in self.cli("info", "commandstats").splitlines():
            m = re.match(r"cmdstat_(evalsha|eval):calls=(\d+),usec=(\d+)", line)
            if m:
                calls, usec = calls + int(m.group(2)), usec + int(m.group(3))
        return calls, usec

    def pipe(self, commands):
        """Sends `commands` (lists of arguments) through redis-cli --pipe; returns
        (Redis CPU µs, script calls, script usec)."""
        def resp(args):
            out = [f"*{len(args)}\r\n"]
            for a in map(str, args):
                out.append(f"${len(a.encode())}\r\n{a}\r\n")
            return "".join(out)
        data = "".join(resp(c) for c in commands).encode()
        c0, u0 = self.evalsha()
        cpu0, t = cpu_us(self.proc.pid), time.monotonic()
        subprocess.run(["redis-cli", "-p", str(self.port), "--pipe"], input=data, capture_output=True, check=True)
        cpu1, wall = cpu_us(self.proc.pid), time.monotonic() - t
        c1, u1 = self.evalsha()
        return cpu1 - cpu0, c1 - c0, u1 - u0, wall

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def lua(path, name):
    """A script's text as keygate sends it (the Rust constant's raw string)."""
    text = open(os.path.join(ROOT, path)).read()
    m = re.search(r"const " + name + r': &str = r#"\n(.*?)"#;', text, re.S)
    return m.group(1)


# ---------------------------------------------------------------- costs

def renewal_commands(lease, n, subjects=500):
    """Renewals as a replica sends them for the default global limit (3,000 a minute, 1%
    slices, 2 s leases): each subject renewed once a second of its clock, reporting 26
    spends (7/8 of a slice) and asking for a slice again."""
    t0, cmds = 1_800_000_000_000, []
    for j in range(n):
        s, k = j % subjects, j // subjects
        now = t0 + j * 1000 // subjects
        cmds.append(["evalsha", lease, 2, f"kgcap:{{s{s}}}:c", f"kgcap:{{s{s}}}:r", now, 60_000, 3000, 600, 101,
                     "replica-a", 26 * (k + 1), 26 * k, 4, 26, 2000])
    return cmds


def saturate(redis, n=100_000):
    """Renewals at full speed (redis-cli --pipe): renewals a second of Redis' CPU (what one
    core does when Redis has it), and Redis' share of a core meanwhile (below 1: the
    machine's other processes took the rest)."""
    lease = redis.cli("script", "load", lua("src/ratelimit/lease.rs", "LEASE"))
    cpu, calls, _, wall = redis.pipe(renewal_commands(lease, n))
    return calls / (cpu / 1e6), cpu / 1e6 / wall


def redis_costs(out):
    redis = Redis()
    try:
        lease = redis.cli("script", "load", lua("src/ratelimit/lease.rs", "LEASE"))
        exact = redis.cli("script", "load", lua("src/ratelimit/redis.rs", "CHECK_AND_COUNT"))
        t0, n = 1_800_000_000_000, 100_000
        cpu, calls, usec, _ = redis.pipe(renewal_commands(lease, n))
        out["redis_us_per_renewal_pipelined"] = cpu / calls
        out["redis_script_us_per_renewal"] = usec / calls
        out["redis_renewals_per_s_one_core"] = 1e6 / (cpu / calls)
        mem = [int(redis.cli("memory", "usage", f"kgcap:{{s{s}}}:{x}")) for s in range(20) for x in "cr"]
        out["redis_bytes_per_subject"] = sum(mem) / 20
        # Exact checks: the default policy's key creations (10 an hour per account), one
        # key a script; 5,000 accounts, each checked until refused and past it.
        cmds = []
        for j in range(n):
            s, k = j % 5000, j // 5000
            cmds.append(["evalsha", exact, 1, f"kgcap:x:{s}", t0 + j, f"m{j}", 3_600_000, 10])
        cpu, calls, usec, _ = redis.pipe(cmds)
        out["redis_us_per_exact_pipelined"] = cpu / calls
        out["redis_script_us_per_exact"] = usec / calls
    finally:
        redis.stop()


class Psql:
    """One psql session, fed statement by statement: its backend's CPU is read from /proc."""

    def __init__(self, url):
        self.proc = subprocess.Popen(["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = int(self.query("SELECT pg_backend_pid();")[0])

    def query(self, sql):
        self.proc.stdin.write(sql + "\nSELECT 'kgcap-done';\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("psql stopped")
            if line.strip() == "kgcap-done":
                return lines
            lines.append(line.strip())

    def cpu(self, sql):
        before = cpu_us(self.pid)
        self.query(sql)
        return cpu_us(self.pid) - before

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def postgres_costs(out):
    url = os.environ.get("KEYGATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    schema = f"kgcap_{os.getpid()}"
    pg = Psql(url)
    try:
        migration = open(os.path.join(ROOT, "migrations/postgres/20261207000011_usage_counts.sql")).read()
        pg.query(f"CREATE SCHEMA {schema}; SET search_path = {schema};\n{migration}")
        pg.query("CREATE TABLE key_credits (key_id TEXT PRIMARY KEY, remaining BIGINT NOT NULL, period BIGINT NOT NULL,"
                 " refill TEXT NOT NULL DEFAULT '');"
                 "INSERT INTO key_credits SELECT 'key' || i, 1000000000, 0, '' FROM generate_series(1, 100) i;")
        # A usage flush: 5,000 rows in one transaction, 100 rows a statement, as
        # src/store/sql/usage.rs writes them; 10 flushes, each a new minute's rows, then the
        # same rows again (the upsert's update path).
        def flush(minute):
            stmts = []
            for c in range(50):
                rows = ", ".join(
                    f"('key', 'k{c * 100 + i}', 'acct{(c * 100 + i) % 500}', 'minute', {minute}, 'ok', '', 3)"
                    for i in range(100))
                stmts.append("INSERT INTO usage_counts (subject_kind, subject_id, account_id, granularity, bucket_start,"
                             f" code, reason, n) VALUES {rows} ON CONFLICT (subject_kind, account_id, subject_id,"
                             " granularity, bucket_start, code, reason) DO UPDATE SET n = usage_counts.n + excluded.n;")
            return "BEGIN;\n" + "\n".join(stmts) + "\nCOMMIT;"
        cpu = sum(pg.cpu(flush(m)) for m in range(10)) + sum(pg.cpu(flush(m)) for m in range(10))
        out["pg_us_per_usage_row"] = cpu / 100_000
        # A credit group commit: one transaction updating one key's balance by a summed cost.
        commits = 2000
        sql = "\n".join(f"BEGIN; UPDATE key_credits SET remaining = remaining - 3 WHERE key_id = 'key{i % 100 + 1}'"
                        " AND remaining >= 3; COMMIT;" for i in range(commits))
        t = time.monotonic()
        out["pg_us_per_credit_commit"] = pg.cpu(sql) / commits
        out["credit_commit_ms"] = (time.monotonic() - t) * 1000 / commits
        # A cache miss: one key's record read by its primary key (a point read; keygate's
        # joins its owner's and credits' rows too, so this is a floor).
        reads = 2000
        sql = "\n".join(f"SELECT * FROM key_credits WHERE key_id = 'key{i % 100 + 1}';" for i in range(reads))
        out["pg_us_per_key_read"] = pg.cpu(sql) / reads
        # An invalidation: keygate's notification (pg_notify on the replicas' channel).
        notes = 2000
        sql = "\n".join(f"SELECT pg_notify('kgcap_{os.getpid()}', 'key:acct{i}:k{i}:{i}');" for i in range(notes))
        out["pg_us_per_notification"] = pg.cpu(sql) / notes
        pg.query(f"DROP SCHEMA {schema} CASCADE;")
    finally:
        pg.close()


def costs(a):
    out = {}
    redis_costs(out)
    postgres_costs(out)
    out = {k: round(v, 2) for k, v in out.items()}
    print(json.dumps(out, indent=2))
    if a.out:
        # The file's other figures (measured by other commands, docs/capacity.md) are kept.
        kept = json.load(open(a.out)) if os.path.exists(a.out) else {}
        with open(a.out, "w") as f:
            f.write(json.dumps({**kept, **out}, indent=2) + "\n")


# ---------------------------------------------------------------- run

POLICY_LIMIT = re.compile(r"(\[global_limit\]\nlimit = )\d+")


def run(a):
    bin_dir = a.bin_dir or os.path.join(ROOT, "target", "release")
    work = tempfile.mkdtemp(prefix="kg-capacity-")
    redis = Redis()
    procs = []
    try:
        policy = os.path.join(work, "policy.toml")
        with open(os.path.join(ROOT, "policy", "default.toml")) as f:
            text, n = POLICY_LIMIT.subn(lambda m: m.group(1) + str(a.limit), f.read())
            assert n == 1, "the default policy's global limit"
        with open(policy, "w") as f:
            f.write(text)
        token = os.urandom(24).hex()
        env = dict(os.environ, KEYGATE_ADMIN_TOKEN=token)
        port = free_port()
        logs = {name: open(os.path.join(work, name + ".log"), "w+") for name in ("floor", "keygate", "load")}
        floor = subprocess.Popen([os.path.join(bin_dir, "keygate-bench"), "floor"], stdout=logs["floor"],
                                 stderr=subprocess.DEVNULL)
        keygate = subprocess.Popen(
            [os.path.join(bin_dir, "keygate"), "serve", "--listen", f"127.0.0.1:{port}",
             "--database-url", f"sqlite://{work}/kg.db", "--policy", policy,
             "--rate-limit-store", f"redis://127.0.0.1:{redis.port}",
             "--rate-limit-lease-percent", str(a.lease_percent), "--rate-limit-lease-ms", str(a.lease_ms)],
            env=env, stdout=logs["keygate"], stderr=subprocess.STDOUT)
        procs += [floor, keygate]

        def read(name):
            logs[name].flush()
            with open(os.path.join(work, name + ".log")) as f:
                return f.read()
        for _ in range(600):
            if "listening on" in read("floor") and "keygate is serving" in read("keygate"):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(read("keygate"))
        floor_address = re.search(r"listening on (\S+)", read("floor")).group(1)
        load = subprocess.Popen(
            [os.path.join(bin_dir, "keygate-bench"), "load", "--target", f"http://127.0.0.1:{port}",
             "--admin-token", token, "--floor", floor_address, "--keys", str(a.keys), "--concurrency",
             str(a.concurrency), "--seconds", str(a.seconds), "--rounds", str(a.rounds), "--warmup-seconds", "0"],
            stdout=logs["load"], stderr=subprocess.DEVNULL)
        procs.append(load)
        samples = []
        while load.poll() is None:
            if "rounds x" in read("load"):
                try:
                    calls, _ = redis.evalsha()
                    samples.append((cpu_us(floor.pid), cpu_us(keygate.pid), cpu_us(redis.proc.pid), calls))
                except (OSError, subprocess.CalledProcessError):
                    pass
            time.sleep(0.2)
        text = read("load")
        rate = float(re.search(r"keygate.*c=\d+\s+(\d+)/s", text).group(1))
        for p in procs:
            p.terminate()
            p.wait()
        # Redis alone, at full speed on the scripts keygate sends: where its core runs out.
        saturation = saturate(redis)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    # Each 0.2 s interval is keygate's when keygate's server spent more CPU than the floor's.
    # Redis' own idle work (its cron) is measured in the floor's intervals with no script
    # run, and taken out of keygate's.
    spent = {"seconds": 0.0, "keygate": 0.0, "redis": 0.0, "renewals": 0}
    idle = [0.0, 0.0]
    for x, y in zip(samples, samples[1:]):
        d = [q - p for p, q in zip(x, y)]
        seconds = 0.2
        if d[1] > d[0]:
            spent["seconds"] += seconds
            spent["keygate"] += d[1]
            spent["redis"] += d[2]
            spent["renewals"] += d[3]
        elif d[3] == 0:
            idle[0] += seconds
            idle[1] += d[2]
    baseline = idle[1] / idle[0] if idle[0] else 0.0
    spent["redis"] = max(spent["redis"] - baseline * spent["seconds"], 0.0)
    keygate_seconds = spent["seconds"]
    decisions = rate * keygate_seconds
    measured_renewals = spent["renewals"] / spent["seconds"]
    redis_us_per_decision = spent["redis"] / (rate * spent["seconds"])
    size = slice_size(a.limit, a.lease_percent / 100)
    predicted = predict_run(rate, a.keys, size, a.lease_ms / 1000, a.rounds, a.seconds)
    with open(a.costs) as f:
        unit = json.load(f)["redis_us_per_renewal_pipelined"]
    # Saturation: Redis' core runs out at 1e6 / (CPU per renewal) renewals a second; the
    # run's shape turns renewals into decisions (renewals per decision: predicted by the
    # model, measured in the run).
    predicted_sat = 1e6 / unit * rate / predicted
    measured_sat = saturation[0] * rate / measured_renewals
    result = {
        "decisions/s (keygate's rounds)": rate,
        "decisions": decisions,
        "slice": size,
        "keygate CPU µs per decision": spent["keygate"] / (rate * spent["seconds"]),
        "Redis idle CPU µs/s (taken out)": baseline,
        "Redis CPU µs per renewal (in this run)": spent["redis"] / max(spent["renewals"], 1),
        "renewals/s predicted": predicted,
        "renewals/s measured": measured_renewals,
        "renewals/s error": predicted / measured_renewals - 1,
        "Redis CPU µs per decision (in this run)": redis_us_per_decision,
        "Redis renewals/s at full speed, predicted (1 core ÷ pipelined CPU per renewal)": 1e6 / unit,
        "Redis renewals/s at full speed, measured (a second of its CPU)": saturation[0],
        "Redis' share of a core meanwhile": saturation[1],
        "Redis saturates at decisions/s, predicted": predicted_sat,
        "Redis saturates at decisions/s, measured": measured_sat,
        "saturation error": predicted_sat / measured_sat - 1,
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=2,
                     ensure_ascii=False))


# ---------------------------------------------------------------- arguments

def positive(text):
    """A number above zero (argparse says which argument is not)."""
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def positive_int(text):
    """A whole number above zero."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("costs", help="measure unit costs in Redis and Postgres")
    c.add_argument("--out", help="also write them here (JSON)")
    m = sub.add_parser("model", help="what a deployment takes")
    m.add_argument("--costs", default=COSTS, help="unit costs (JSON; docs/capacity-costs.json)")
    m.add_argument("--decisions", type=positive, default=1e6, help="decisions a second")
    m.add_argument("--accounts", type=positive, default=1e5)
    m.add_argument("--keys", type=positive, default=1e7)
    m.add_argument("--replicas", type=positive_int, default=50, help="keygate replicas given")
    m.add_argument("--spread", choices=["all", "sticky"], default="all",
                   help="an account's calls reach every replica (round robin) or one (hashed by account)")
    m.add_argument("--limit", type=int, default=3000, help="the high-rate limit per account (a minute)")
    m.add_argument("--lease-percent", type=positive, default=1.0, help="slice, in percent of the limit")
    m.add_argument("--lease-ms", type=positive_int, default=2000)
    m.add_argument("--exact-share", type=float, default=0.0, help="share of decisions with an exact limit")
    m.add_argument("--credit-share", type=float, default=0.0, help="share of decisions spending credits")
    m.add_argument("--credit-keys", type=float, default=1.0, help="keys with credits that are called")
    m.add_argument("--cache-capacity", type=float, default=100_000)
    m.add_argument("--flush-s", type=positive, default=10.0, help="--usage-flush-seconds")
    m.add_argument("--cache-ttl-s", type=positive, default=30.0, help="--cache-ttl-seconds")
    m.add_argument("--rows-per-key", type=float, default=3.0,
                   help="usage rows a key (and an account) adds to a flush: its minute, hour and day")
    m.add_argument("--cores-per-replica", type=positive_int, default=2)
    m.add_argument("--keygate-busy", type=positive, default=0.7)
    m.add_argument("--redis-busy", type=positive, default=0.7)
    m.add_argument("--redis-shards", type=int, default=1, help="Redis shards given")
    m.add_argument("--postgres-cores", type=positive, default=8)
    m.add_argument("--postgres-busy", type=positive, default=0.7)
    r = sub.add_parser("run", help="predicted against measured, on a private Redis")
    r.add_argument("--costs", default=COSTS)
    r.add_argument("--bin-dir", help="keygate and keygate-bench (default: target/release)")
    r.add_argument("--keys", type=int, default=500)
    r.add_argument("--limit", type=int, default=1_000_000,
                   help="the global limit a minute (high: no account is refused, the run measures renewals)")
    r.add_argument("--lease-percent", type=float, default=1.0)
    r.add_argument("--lease-ms", type=int, default=2000)
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--seconds", type=int, default=40)
    r.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    if a.command == "costs":
        costs(a)
    elif a.command == "run":
        run(a)
    else:
        with open(a.costs) as f:
            a.costs = json.load(f)
        print(json.dumps(model(a), indent=2, ensure_ascii=False, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    sys.exit(main())
