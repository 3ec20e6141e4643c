"""The chart's image, run as the chart runs it, on a private containerd.

Imports IMAGE.tar (scripts/chart-image.sh) into a containerd of its own (temp
root, state and socket, CRI off, namespace sandpool-chart-image), then starts
every `command: [sandpool]` container of the rendered charts the way the
kubelet would: the image's Env/User/WorkingDir, then the container's command
and args ($(VAR) expanded from its env), env (secretKeyRef/configMapKeyRef
from the rendered Secrets/ConfigMaps, fieldRef from a fake pod), user/group
(runAsUser, runAsGroup, fsGroup), capabilities (drop ALL / privileged),
noNewPrivileges, read-only root, hostPID, and every volumeMount (emptyDir,
configMap and secret volumes filled from the rendering, the service-account
token of pods that mount one, hostPaths: /run/containerd is this containerd's
socket directory, /sys/fs/cgroup the host's, others temp dirs). Each task
gets a network namespace of its own (loopback only) and must then, within a
deadline, still run, listen on every containerPort it declares, and pass its
chart probes (httpGet/tcpSocket, from inside its namespace). The apiserver
the controller sees (KUBERNETES_SERVICE_HOST) is 127.0.0.1:6443, closed: its
readiness probe is not required, but its log must show it reached the
apiserver connection step. The runtime-install init container the controller
adds to pool pods runs too and must install /sandpool-runtime.

A wrong flag, a missing file or library, or a binary that cannot start in
the image fails. Needs root, containerd, ctr, runc, nsenter, curl.

Usage: python check-chart-image.py IMAGE.tar RENDERED.yaml [RENDERED.yaml...]
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import yaml

NS = "sandpool-chart-image"
DEADLINE = 40.0
CAPS = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def die(msg):
    sys.exit(f"check-chart-image: {msg}")


def image_of(tar_path):
    """(ref, config, chain id of the top layer) of a one-manifest OCI archive."""
    with tarfile.open(tar_path) as t:
        def blob(digest):
            return json.load(t.extractfile("blobs/" + digest.replace(":", "/")))
        index = json.load(t.extractfile("index.json"))
        desc = index["manifests"][0]
        ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        config = blob(blob(desc["digest"])["config"]["digest"])
    chain = None
    for diff in config["rootfs"]["diff_ids"]:
        chain = diff if chain is None else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
    return ref, config["config"], chain


class Containerd:
    def __init__(self, work):
        self.dir = os.path.join(work, "containerd")
        self.run_dir = os.path.join(work, "run-containerd")
        os.makedirs(self.dir)
        os.makedirs(self.run_dir)
        sock = os.path.join(self.run_dir, "containerd.sock")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.proc = subprocess.Popen(["containerd", "--config", cfg], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.ctr_base = ["ctr", "-a", sock, "-n", NS]
        for _ in range(100):
            if os.path.exists(sock) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        die(f"containerd did not start: {open(self.log.name).read()[-2000:]}")

    def ctr(self, *args, check=True):
        r = subprocess.run([*self.ctr_base, *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            die(f"ctr {' '.join(args)}: {r.stderr.strip()}")
        return r

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def expand(s, env):
    """Kubernetes' $(VAR) expansion ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


class Pod:
    """One container of a rendered workload, with what the kubelet gives it."""

    def __init__(self, doc, c, objects, work):
        self.doc, self.c = doc, c
        self.id = f"{doc['kind']}-{doc['metadata']['name']}-{c['name']}".lower()
        self.ns = doc["metadata"].get("namespace", "sandpool")
        self.spec = doc["spec"]["template"]["spec"]
        self.objects = objects
        self.dir = os.path.join(work, self.id)
        os.makedirs(self.dir)

    def env(self, image_env):
        env = dict(e.split("=", 1) for e in image_env)
        env.update(HOSTNAME=self.id, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="6443")
        fields = {"spec.nodeName": "ci-node", "metadata.namespace": self.ns,
                  "metadata.name": f"{self.doc['metadata']['name']}-0", "status.podIP": "127.0.0.1"}
        for e in self.c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
                continue
            src = e["valueFrom"]
            if "fieldRef" in src:
                env[e["name"]] = fields[src["fieldRef"]["fieldPath"]]
            else:
                kind, ref = ("Secret", src["secretKeyRef"]) if "secretKeyRef" in src else ("ConfigMap", src["configMapKeyRef"])
                env[e["name"]] = self.data(kind, ref["name"])[ref["key"]].decode()
        return env

    def data(self, kind, name):
        obj = self.objects.get((kind, name))
        if obj is None:
            die(f"{self.id}: {kind}/{name} is not in the rendering")
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
        return {k: v.encode() for k, v in obj.get("data", {}).items()}

    def files(self, name, content, gid):
        d = os.path.join(self.dir, "vol-" + name)
        os.makedirs(d)
        for k, v in content.items():
            with open(os.path.join(d, k), "wb") as f:
                f.write(v)
            os.chown(os.path.join(d, k), 0, gid)
            os.chmod(os.path.join(d, k), 0o644)
        os.chmod(d, 0o755)
        return d

    def mounts(self, cd, gid):
        vols = {v["name"]: v for v in self.spec.get("volumes", [])}
        out = []
        for m in self.c.get("volumeMounts", []):
            v = vols[m["name"]]
            if "emptyDir" in v:
                src = os.path.join(self.dir, "vol-" + m["name"])
                os.makedirs(src)
                os.chmod(src, 0o777)
            elif "configMap" in v:
                src = self.files(m["name"], self.data("ConfigMap", v["configMap"]["name"]), gid)
            elif "secret" in v:
                src = self.files(m["name"], self.data("Secret", v["secret"]["secretName"]), gid)
            elif "hostPath" in v:
                src = {"/run/containerd": cd.run_dir, "/sys/fs/cgroup": "/sys/fs/cgroup"}.get(v["hostPath"]["path"])
                if src is None:
                    src = os.path.join(self.dir, "host" + v["hostPath"]["path"].replace("/", "_"))
                    os.makedirs(src)
            else:
                die(f"{self.id}: volume {m['name']}: unsupported kind {sorted(v)}")
            out.append((src, m["mountPath"], m.get("readOnly", False)))
        if self.spec.get("automountServiceAccountToken", True):
            webhook = [o for (k, n), o in self.objects.items() if k == "Secret" and "ca.crt" in o.get("data", {})]
            ca = base64.b64decode(webhook[0]["data"]["ca.crt"]) if webhook else b""
            src = self.files("serviceaccount", {"token": b"ci-token", "ca.crt": ca, "namespace": self.ns.encode()}, gid)
            out.append((src, "/var/run/secrets/kubernetes.io/serviceaccount", True))
        etc = self.files("etc", {"hosts": f"127.0.0.1 localhost {self.id}\n".encode(),
                                 "resolv.conf": b"nameserver 127.0.0.1\n", "hostname": self.id.encode()}, gid)
        out += [(os.path.join(etc, f), "/etc/" + f, False) for f in ("hosts", "resolv.conf", "hostname")]
        return out

    def oci_spec(self, base, image_cfg, root, cd):
        spec = json.loads(json.dumps(base))
        pod_sc, sc = self.spec.get("securityContext", {}), self.c.get("securityContext", {})
        env = self.env(image_cfg.get("Env", []))
        user = (image_cfg.get("User") or "0:0").split(":") + ["0"]
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", int(user[0])))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", int(user[1])))
        extra = [pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []
        proc = spec["process"]
        proc["args"] = [expand(a, env) for a in self.c["command"] + self.c.get("args", [])]
        proc["env"] = [f"{k}={v}" for k, v in env.items()]
        proc["user"] = {"uid": uid, "gid": gid, "additionalGids": extra}
        proc["cwd"] = self.c.get("workingDir") or image_cfg.get("WorkingDir") or "/"
        caps = host_caps() if sc.get("privileged") else proc["capabilities"]["bounding"]
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            caps = []
        proc["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
        proc["noNewPrivileges"] = sc.get("allowPrivilegeEscalation", True) is False
        if sc.get("privileged"):
            spec["linux"].pop("maskedPaths", None)
            spec["linux"].pop("readonlyPaths", None)
        if self.spec.get("hostPID"):
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]
        spec["root"] = {"path": root, "readonly": bool(sc.get("readOnlyRootFilesystem"))}
        spec["hostname"] = self.id
        for src, dst, ro in self.mounts(cd, extra[0] if extra else gid):
            spec["mounts"].append({"destination": dst, "type": "bind", "source": src,
                                   "options": ["rbind", "ro" if ro else "rw"]})
        return spec


def host_caps():
    """Every capability this process may hand on (a privileged container's set)."""
    bnd = next(int(line.split()[1], 16) for line in open("/proc/self/status") if line.startswith("CapBnd:"))
    return [f"CAP_{c}" for i, c in enumerate(CAPS) if bnd >> i & 1]


def listening(pid):
    ports = set()
    for f in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{f}").read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def probe(pid, c, p):
    """A chart probe from inside the task's network namespace."""
    named = {x.get("name"): x["containerPort"] for x in c.get("ports", [])}
    if "httpGet" in p:
        port = named.get(p["httpGet"]["port"], p["httpGet"]["port"])
        r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "curl", "-s", "-o", "/dev/null",
                            "-w", "%{http_code}", "--max-time", "2",
                            f"http://127.0.0.1:{port}{p['httpGet'].get('path', '/')}"], capture_output=True, text=True)
        return r.stdout.strip().isdigit() and 200 <= int(r.stdout.strip()) < 400
    if "tcpSocket" in p:
        return named.get(p["tcpSocket"]["port"], p["tcpSocket"]["port"]) in listening(pid)
    die(f"unsupported probe {p}")


def running(cd, cid):
    r = cd.ctr("task", "ls", check=False)
    return any(line.split()[:1] == [cid] and "RUNNING" in line for line in r.stdout.splitlines())


def missing_paths(pod, spec, root):
    """Every absolute path in the args (`/x` or `--flag=/x`) must exist in the
    container: under a mount, in its source; elsewhere, in the image."""
    mounts = sorted(((m["destination"], m["source"]) for m in spec["mounts"] if m["type"] == "bind"),
                    key=lambda m: -len(m[0]))
    for arg in spec["process"]["args"][1:]:
        path = arg.split("=", 1)[-1]
        if not path.startswith("/") or path.startswith("/opt/sandpool/"):
            continue  # /opt/sandpool/: what the runtime install creates
        host = next((src + path[len(dst):] for dst, src in mounts
                     if path == dst or path.startswith(dst.rstrip("/") + "/")), root + path)
        if not os.path.exists(host):
            die(f"{pod.id}: {path} (in its args) does not exist in the container")


def start(cd, base, image_cfg, chain, pod, args=None):
    root = os.path.join(pod.dir, "rootfs")
    os.makedirs(root)
    cd.ctr("snapshots", "prepare", pod.id, chain)
    mount = cd.ctr("snapshots", "mounts", root, pod.id).stdout.strip()
    subprocess.run(["sh", "-c", mount], check=True)
    spec = pod.oci_spec(base, image_cfg, root, cd)
    if args is not None:
        spec["process"]["args"] = args
    missing_paths(pod, spec, root)
    path = os.path.join(pod.dir, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    log = os.path.join(pod.dir, "log")
    pidfile = os.path.join(pod.dir, "pid")
    cd.ctr("run", "-d", "--config", path, "--log-uri", f"file://{log}", "--pid-file", pidfile, pod.id)
    return int(open(pidfile).read()), log, spec


def check_workload(cd, base, image_cfg, chain, pod):
    pid, log, spec = start(cd, base, image_cfg, chain, pod)
    c = pod.c
    want_ports = {p["containerPort"] for p in c.get("ports", [])}
    if spec["process"]["args"][1:2] == ["controller"]:
        return check_controller(cd, pod, log, spec)
    probes = [c[k] for k in ("readinessProbe", "livenessProbe") if k in c]
    end = time.monotonic() + DEADLINE
    missing, failed = want_ports, probes
    while time.monotonic() < end:
        if not running(cd, pod.id):
            die(f"{pod.id} exited: args {spec['process']['args']}\n{open(log).read()[-3000:]}")
        missing = want_ports - listening(pid)
        failed = [p for p in probes if not probe(pid, c, p)]
        if not missing and not failed:
            print(f"  {pod.id}: running as {spec['process']['user']['uid']}, listening on "
                  f"{sorted(want_ports)}, {len(probes)} probe(s) pass")
            return
        time.sleep(0.3)
    die(f"{pod.id}: after {DEADLINE}s: ports not listening {sorted(missing)}, probes failing {failed}, "
        f"args {spec['process']['args']}\n{open(log).read()[-3000:]}")


def check_controller(cd, pod, log, spec):
    """The controller reads its files, then calls the apiserver (127.0.0.1:6443,
    closed): it must get there (a refused connection) with no other error."""
    def refused(text):
        return "tcp connect error" in text and "Connection refused" in text

    end = time.monotonic() + DEADLINE
    while running(cd, pod.id) and not refused(open(log).read()) and time.monotonic() < end:
        time.sleep(0.2)
    text = open(log).read()
    errors = [line for line in text.splitlines() if "ERROR" in line or line.startswith("Error:")]
    if not refused(text):
        die(f"{pod.id}: expected a refused apiserver connection, args {spec['process']['args']}\n{text[-3000:]}")
    bad = [e for e in errors if "client error (Connect)" not in e and not e.startswith("Error: creating pool")]
    if bad:
        die(f"{pod.id}: errors besides the apiserver connection: {bad}\n{text[-3000:]}")
    print(f"  {pod.id}: running as {spec['process']['user']['uid']}, read its files, stopped at the "
          f"apiserver (127.0.0.1:6443, closed): {errors[-1] if errors else ''}")


def check_runtime_install(cd, base, image_cfg, chain, work):
    """The init container the controller adds to pool pods (services/controller/src/pods.rs)."""
    c = {"name": "sandpool-runtime-install", "command": ["/sandpool-runtime", "--install-to=/opt/sandpool/sandpool-runtime",
                                                     "--install-bootstrap-to=/opt/sandpool/opensandbox/bootstrap.sh"],
         "volumeMounts": [{"name": "sandpool-runtime", "mountPath": "/opt/sandpool"}]}
    doc = {"kind": "Pod", "metadata": {"name": "pool-pod", "namespace": "sandpool"},
           "spec": {"template": {"spec": {"containers": [c], "volumes": [{"name": "sandpool-runtime", "emptyDir": {}}],
                                          "automountServiceAccountToken": False}}}}
    pod = Pod(doc, c, {}, work)
    start(cd, base, image_cfg, chain, pod)
    end = time.monotonic() + DEADLINE
    while running(cd, pod.id) and time.monotonic() < end:
        time.sleep(0.2)
    installed = os.path.join(pod.dir, "vol-sandpool-runtime", "sandpool-runtime")
    if not os.access(installed, os.X_OK):
        die(f"{pod.id}: no executable {installed}\n{open(os.path.join(pod.dir, 'log')).read()[-2000:]}")
    bootstrap = os.path.join(pod.dir, "vol-sandpool-runtime", "opensandbox", "bootstrap.sh")
    if not os.access(bootstrap, os.X_OK):
        die(f"{pod.id}: no executable {bootstrap}\n{open(os.path.join(pod.dir, 'log')).read()[-2000:]}")
    print(f"  {pod.id}: installed /opt/sandpool/sandpool-runtime ({os.path.getsize(installed)} bytes)"
          " and opensandbox/bootstrap.sh")


def cleanup(cd, work):
    for line in cd.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
        cd.ctr("task", "kill", "-s", "SIGKILL", line.split()[0], check=False)
    for _ in range(50):
        if len(cd.ctr("task", "ls", check=False).stdout.splitlines()) <= 1:
            break
        for line in cd.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
            cd.ctr("task", "delete", "--force", line.split()[0], check=False)
        time.sleep(0.1)
    for line in cd.ctr("containers", "ls", "-q", check=False).stdout.split():
        cd.ctr("containers", "delete", line, check=False)
    for d in sorted(os.listdir(work)):
        root = os.path.join(work, d, "rootfs")
        if os.path.ismount(root):
            subprocess.run(["umount", "-l", root], check=False)
    cd.stop()


def main():
    if len(sys.argv) < 3:
        die(__doc__.strip().splitlines()[-1])
    tar, renderings = sys.argv[1], sys.argv[2:]
    for tool in ("containerd", "ctr", "runc", "nsenter", "curl"):
        if not shutil.which(tool):
            die(f"{tool} missing (scripts/install-deps.sh)")
    if os.geteuid() != 0:
        die("needs root (containerd)")
    t_start = time.monotonic()
    ref, image_cfg, chain = image_of(tar)
    pods, seen = [], set()
    work = tempfile.mkdtemp(prefix="sandpool-chart-image-check.")
    for path in renderings:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Secret", "ConfigMap")}
        for d in docs:
            if d["kind"] not in ("Deployment", "DaemonSet"):
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                key = (d["kind"], d["metadata"]["name"], c["name"])
                if c.get("command") != ["sandpool"] or key in seen:
                    continue
                seen.add(key)
                if c["image"] != ref:
                    die(f"{key}: image {c['image']}, but the built image is {ref}")
                pods.append((d, c, objects))
    if len(pods) < 3:
        die(f"expected the controller, gateway and node agent; found {len(pods)} sandpool containers")
    cd = Containerd(work)
    try:
        t0 = time.monotonic()
        cd.ctr("images", "import", tar)
        print(f"imported {ref} into a private containerd ({NS}) in {time.monotonic() - t0:.1f}s")
        base = json.loads(cd.ctr("oci", "spec").stdout)
        for d, c, objects in pods:
            check_workload(cd, base, image_cfg, chain, Pod(d, c, objects, work))
        check_runtime_install(cd, base, image_cfg, chain, work)
    finally:
        cleanup(cd, work)
        shutil.rmtree(work, ignore_errors=True)
    print(f"chart image {ref}: {len(pods)} chart containers and the pool pods' runtime install started as rendered "
          f"({time.monotonic() - t_start:.1f}s)")


if __name__ == "__main__":
    main()
