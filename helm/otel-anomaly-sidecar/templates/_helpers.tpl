{{/* Chart name. */}}
{{- define "otel-anomaly-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, truncated to 63 characters (DNS label). */}}
{{- define "otel-anomaly-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the headless Service (leaves room for the suffix). */}}
{{- define "otel-anomaly-sidecar.headlessName" -}}
{{- printf "%s-headless" (include "otel-anomaly-sidecar.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "otel-anomaly-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otel-anomaly-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-anomaly-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sidecar
{{- end }}

{{- define "otel-anomaly-sidecar.labels" -}}
helm.sh/chart: {{ include "otel-anomaly-sidecar.chart" . }}
{{ include "otel-anomaly-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otel-anomaly
{{- end }}

{{- define "otel-anomaly-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otel-anomaly-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otel-anomaly-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Paths inside the pod. */}}
{{- define "otel-anomaly-sidecar.configDir" -}}/etc/otel-anomaly{{- end }}
{{- define "otel-anomaly-sidecar.apiKeyFile" -}}/etc/otel-anomaly/secrets/elasticsearch-api-key{{- end }}
{{- define "otel-anomaly-sidecar.passwordFile" -}}/etc/otel-anomaly/secrets/elasticsearch-password{{- end }}
{{- define "otel-anomaly-sidecar.caFile" -}}/etc/otel-anomaly/secrets/elasticsearch-ca.crt{{- end }}
{{- define "otel-anomaly-sidecar.pushTokenFile" -}}/etc/otel-anomaly/secrets/push-token{{- end }}
{{- define "otel-anomaly-sidecar.pushCaFile" -}}/etc/otel-anomaly/secrets/aggregator-ca.crt{{- end }}
{{- define "otel-anomaly-sidecar.receiverCertFile" -}}/etc/otel-anomaly/secrets/receiver-tls.crt{{- end }}
{{- define "otel-anomaly-sidecar.receiverKeyFile" -}}/etc/otel-anomaly/secrets/receiver-tls.key{{- end }}
{{- define "otel-anomaly-sidecar.receiverClientCaFile" -}}/etc/otel-anomaly/secrets/receiver-client-ca.crt{{- end }}
{{/* Token file of receivers.auth.keys[i]: pass (dict "i" i). */}}
{{- define "otel-anomaly-sidecar.receiverTokenFile" -}}/etc/otel-anomaly/secrets/receiver-token-{{ .i }}{{- end }}
{{- define "otel-anomaly-sidecar.otlpAuthorizationFile" -}}/etc/otel-anomaly/secrets/otlp-authorization{{- end }}
{{- define "otel-anomaly-sidecar.otlpCaFile" -}}/etc/otel-anomaly/secrets/otlp-ca.crt{{- end }}

{{/* host:port for a listener; IPv6 hosts get brackets. */}}
{{- define "otel-anomaly-sidecar.listen" -}}
{{- $host := .host -}}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end -}}
{{- printf "%s:%d" $host (int .port) -}}
{{- end }}

{{/*
Checks across values, with plain messages (values.schema.json checks each value).
*/}}
{{- define "otel-anomaly-sidecar.validate" -}}
{{- $v := .Values }}
{{- if and $v.persistence.enabled (or $v.autoscaling.enabled (gt (int $v.replicaCount) 1)) }}
{{- fail "persistence.enabled needs a single replica (replicaCount: 1, autoscaling.enabled: false): replicas must not share one data_dir. Use the default emptyDir with more replicas." }}
{{- end }}
{{- $ports := list (int $v.admin.port) }}
{{- if $v.receivers.grpc.enabled }}{{ $ports = append $ports (int $v.receivers.grpc.port) }}{{ end }}
{{- if $v.receivers.http.enabled }}{{ $ports = append $ports (int $v.receivers.http.port) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "receivers.grpc.port, receivers.http.port and admin.port must differ (got %v)" $ports) }}
{{- end }}
{{- if not (or $v.receivers.grpc.enabled $v.receivers.http.enabled) }}
{{- fail "enable at least one of receivers.grpc and receivers.http" }}
{{- end }}
{{- if lt (int $v.config.receiver.max_decompressed_bytes) (int $v.config.receiver.max_request_bytes) }}
{{- fail "config.receiver.max_decompressed_bytes must be at least config.receiver.max_request_bytes" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- $push := $v.push }}
{{- if $push.enabled }}
{{- if not (and $push.url $push.token.existingSecret) }}
{{- fail "push.enabled needs push.url and push.token.existingSecret (the Secret holding this sidecar's token)" }}
{{- end }}
{{- if and $push.tls.ca.existingSecret (not (hasPrefix "https://" $push.url)) }}
{{- fail "push.tls.ca is only used with an https:// push.url" }}
{{- end }}
{{- end }}
{{- $rtls := $v.receivers.tls }}
{{- if and $rtls.enabled (not $rtls.existingSecret) }}
{{- fail "receivers.tls.enabled needs receivers.tls.existingSecret (a kubernetes.io/tls Secret with the listeners' certificate and key)" }}
{{- end }}
{{- if and $rtls.clientCa.existingSecret (not $rtls.enabled) }}
{{- fail "receivers.tls.clientCa (mTLS) needs receivers.tls.enabled" }}
{{- end }}
{{- if and $v.receivers.auth.enabled (not $v.receivers.auth.existingSecret) }}
{{- fail "receivers.auth.enabled needs receivers.auth.existingSecret (the Secret whose receivers.auth.keys each hold one accepted token)" }}
{{- end }}
{{- $otlp := (($v.config.export | default dict).otlp) | default dict }}
{{- if and (or $v.otlpExport.authorization.existingSecret $v.otlpExport.tls.ca.existingSecret) (not $otlp.endpoint) }}
{{- fail "otlpExport secrets need the next hop: set config.export.otlp.endpoint" }}
{{- end }}
{{- if and $v.otlpExport.tls.ca.existingSecret $otlp.endpoint (not (hasPrefix "https://" $otlp.endpoint)) }}
{{- fail "otlpExport.tls.ca is only used with an https:// config.export.otlp.endpoint" }}
{{- end }}
{{- $es := $v.elasticsearch }}
{{- if $es.enabled }}
{{- if and $es.urls $es.cloudId }}
{{- fail "give elasticsearch.urls or elasticsearch.cloudId, not both" }}
{{- end }}
{{- if not (or $es.urls $es.cloudId) }}
{{- fail "elasticsearch.enabled needs elasticsearch.urls (or elasticsearch.cloudId)" }}
{{- end }}
{{- if and $es.apiKey.existingSecret $es.basicAuth.username }}
{{- fail "give elasticsearch.apiKey or elasticsearch.basicAuth, not both" }}
{{- end }}
{{- if and $es.basicAuth.username (not $es.basicAuth.existingSecret) }}
{{- fail "elasticsearch.basicAuth.username needs elasticsearch.basicAuth.existingSecret (the Secret holding the password)" }}
{{- end }}
{{- if and $es.basicAuth.existingSecret (not $es.basicAuth.username) }}
{{- fail "elasticsearch.basicAuth.existingSecret needs elasticsearch.basicAuth.username" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The sidecar's configuration file. Chart-owned keys are merged over `config`
(values.schema.json keeps `config` from naming them).
*/}}
{{- define "otel-anomaly-sidecar.config" -}}
{{- $v := .Values }}
{{- $owned := dict "environment" $v.environment "data_dir" $v.persistence.mountPath }}
{{- if $v.cluster }}{{ $_ := set $owned "cluster" $v.cluster }}{{ end }}
{{- $host := $v.receivers.listenHost }}
{{- $receiver := dict
  "grpc" (dict "enabled" $v.receivers.grpc.enabled "listen" (include "otel-anomaly-sidecar.listen" (dict "host" $host "port" $v.receivers.grpc.port)))
  "http" (dict "enabled" $v.receivers.http.enabled "listen" (include "otel-anomaly-sidecar.listen" (dict "host" $host "port" $v.receivers.http.port))) }}
{{- $rtls := $v.receivers.tls }}
{{- if $rtls.enabled }}
{{- $tls := dict "cert_file" (include "otel-anomaly-sidecar.receiverCertFile" .) "key_file" (include "otel-anomaly-sidecar.receiverKeyFile" .) }}
{{- if $rtls.clientCa.existingSecret }}
{{- $_ := set $tls "client_ca_file" (include "otel-anomaly-sidecar.receiverClientCaFile" .) }}
{{- end }}
{{- $_ := set $receiver.grpc "tls" $tls }}
{{- $_ := set $receiver.http "tls" (deepCopy $tls) }}
{{- end }}
{{- if $v.receivers.auth.enabled }}
{{- $files := list }}
{{- range $i, $_ := $v.receivers.auth.keys }}
{{- $files = append $files (include "otel-anomaly-sidecar.receiverTokenFile" (dict "i" $i)) }}
{{- end }}
{{- $_ := set $receiver "auth" (dict "token_files" $files) }}
{{- end }}
{{- $_ := set $owned "receiver" $receiver }}
{{- $_ := set $owned "admin" (dict "listen" (include "otel-anomaly-sidecar.listen" (dict "host" $host "port" $v.admin.port))) }}
{{- if $v.elasticsearch.enabled }}
{{- $es := $v.elasticsearch }}
{{- $out := dict "mode" $es.mode "dataset" $es.dataset "setup" $es.setup "compatibility_header" $es.compatibilityHeader "bulk" (deepCopy $es.bulk) }}
{{- if $es.cloudId }}
{{- $_ := set $out "cloud_id" $es.cloudId }}
{{- $_ := set $out "urls" (list) }}
{{- else }}
{{- $_ := set $out "urls" $es.urls }}
{{- end }}
{{- if $es.apiKey.existingSecret }}
{{- $_ := set $out "api_key_file" (include "otel-anomaly-sidecar.apiKeyFile" .) }}
{{- end }}
{{- if $es.basicAuth.username }}
{{- $_ := set $out "username" $es.basicAuth.username }}
{{- $_ := set $out "password_file" (include "otel-anomaly-sidecar.passwordFile" .) }}
{{- end }}
{{- if $es.tls.ca.existingSecret }}
{{- $_ := set $out "ca_file" (include "otel-anomaly-sidecar.caFile" .) }}
{{- end }}
{{- $_ := set $owned "export" (dict "elasticsearch" $out) }}
{{- end }}
{{- $otlpSecrets := dict }}
{{- if $v.otlpExport.authorization.existingSecret }}
{{- $_ := set $otlpSecrets "authorization_file" (include "otel-anomaly-sidecar.otlpAuthorizationFile" .) }}
{{- end }}
{{- if $v.otlpExport.tls.ca.existingSecret }}
{{- $_ := set $otlpSecrets "ca_file" (include "otel-anomaly-sidecar.otlpCaFile" .) }}
{{- end }}
{{- if $otlpSecrets }}
{{- $export := $owned.export | default dict }}
{{- $_ := set $export "otlp" $otlpSecrets }}
{{- $_ := set $owned "export" $export }}
{{- end }}
{{- if $v.push.enabled }}
{{- $push := dict "url" $v.push.url "token_file" (include "otel-anomaly-sidecar.pushTokenFile" .) }}
{{- with $v.push.sidecarId }}{{ $_ := set $push "sidecar_id" . }}{{ end }}
{{- if $v.push.tls.ca.existingSecret }}
{{- $_ := set $push "ca_file" (include "otel-anomaly-sidecar.pushCaFile" .) }}
{{- end }}
{{- $_ := set $owned "push" $push }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy $v.config) $owned) }}
{{- end }}

{{/*
True when /readyz could never turn ready: with export.elasticsearch.setup off the
sidecar is ready only after its first successful bulk request, which cannot come
while the Service sends it no traffic because it is not ready.
*/}}
{{- define "otel-anomaly-sidecar.readyzDeadlock" -}}
{{- $es := .Values.elasticsearch }}
{{- $probe := .Values.readinessProbe.httpGet | default dict }}
{{- if and $es.enabled (not $es.setup) (eq ($probe.path | toString) "/readyz") }}true{{ end }}
{{- end }}

{{/* The readiness probe: /readyz, or /healthz in the case above. */}}
{{- define "otel-anomaly-sidecar.readinessProbe" -}}
{{- $probe := deepCopy .Values.readinessProbe }}
{{- if include "otel-anomaly-sidecar.readyzDeadlock" . }}
{{- $_ := set $probe.httpGet "path" "/healthz" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* OTLP ports of the Services. */}}
{{- define "otel-anomaly-sidecar.otlpPorts" -}}
{{- if .Values.receivers.grpc.enabled }}
- name: otlp-grpc
  port: {{ .Values.receivers.grpc.port }}
  targetPort: otlp-grpc
  protocol: TCP
  appProtocol: grpc
{{- end }}
{{- if .Values.receivers.http.enabled }}
- name: otlp-http
  port: {{ .Values.receivers.http.port }}
  targetPort: otlp-http
  protocol: TCP
  appProtocol: http
{{- end }}
{{- end }}

{{/* Port of a URL (explicit, else 443 / 80 by scheme). */}}
{{- define "otel-anomaly-sidecar.urlPort" -}}
{{- $u := urlParse . }}
{{- $parts := splitList ":" $u.host }}
{{- if gt (len $parts) 1 }}{{ last $parts }}{{ else }}{{ ternary 443 80 (eq $u.scheme "https") }}{{ end }}
{{- end }}

{{/* Port of push.url. */}}
{{- define "otel-anomaly-sidecar.pushPort" -}}
{{- include "otel-anomaly-sidecar.urlPort" .Values.push.url }}
{{- end }}

{{/* Ports of processor mode's next hop (config.export.otlp endpoint and per-signal endpoints), one per line. */}}
{{- define "otel-anomaly-sidecar.nextHopPorts" -}}
{{- $otlp := ((.Values.config.export | default dict).otlp) | default dict }}
{{- $ports := list }}
{{- with $otlp.endpoint }}{{ $ports = append $ports (include "otel-anomaly-sidecar.urlPort" .) }}{{ end }}
{{- range $signal := list "traces" "metrics" "logs" }}
{{- with (get $otlp $signal) }}{{ with .endpoint }}{{ $ports = append $ports (include "otel-anomaly-sidecar.urlPort" .) }}{{ end }}{{ end }}
{{- end }}
{{- join "\n" (uniq $ports) }}
{{- end }}

{{/*
NOTES.txt: the collector exporter's tls (and headers) block for the sidecar's
receivers; pass (dict "Values" .Values "indent" N).
*/}}
{{- define "otel-anomaly-sidecar.notesClientTls" -}}
{{- $tls := .Values.receivers.tls }}
{{- $lines := list "tls:" }}
{{- if $tls.enabled }}
{{- $lines = append $lines "  ca_file: /etc/otelcol/otel-anomaly-ca.pem   # the CA that signed receivers.tls' certificate" }}
{{- if $tls.clientCa.existingSecret }}
{{- $lines = append $lines "  cert_file: /etc/otelcol/client.pem   # mTLS: signed by the CA in receivers.tls.clientCa" }}
{{- $lines = append $lines "  key_file: /etc/otelcol/client-key.pem" }}
{{- end }}
{{- else }}
{{- $lines = append $lines "  insecure: true   # the sidecar's OTLP receivers speak plaintext (receivers.tls.enabled is false)" }}
{{- end }}
{{- range $lines }}
{{ . | indent (int $.indent) }}
{{- end }}
{{- include "otel-anomaly-sidecar.notesAuthHeader" . }}
{{- end }}

{{/* NOTES.txt: the collector exporter's authorization header when receivers.auth is on. */}}
{{- define "otel-anomaly-sidecar.notesAuthHeader" -}}
{{- if .Values.receivers.auth.enabled }}
{{ "headers:" | indent (int .indent) }}
{{ "  authorization: \"Bearer ${env:OTEL_ANOMALY_TOKEN}\"   # a token from receivers.auth's Secret" | indent (int .indent) }}
{{- end }}
{{- end }}
