{{/* Chart name. */}}
{{- define "otel-anomaly-aggregator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, truncated to 63 characters (DNS label). */}}
{{- define "otel-anomaly-aggregator.fullname" -}}
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

{{/* Name of the headless Service that governs the StatefulSet (leaves room for the suffix). */}}
{{- define "otel-anomaly-aggregator.headlessName" -}}
{{- printf "%s-headless" (include "otel-anomaly-aggregator.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "otel-anomaly-aggregator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otel-anomaly-aggregator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-anomaly-aggregator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: aggregator
{{- end }}

{{- define "otel-anomaly-aggregator.labels" -}}
helm.sh/chart: {{ include "otel-anomaly-aggregator.chart" . }}
{{ include "otel-anomaly-aggregator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otel-anomaly
{{- end }}

{{- define "otel-anomaly-aggregator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otel-anomaly-aggregator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otel-anomaly-aggregator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Paths inside the pod. */}}
{{- define "otel-anomaly-aggregator.configDir" -}}/etc/otel-anomaly{{- end }}
{{- define "otel-anomaly-aggregator.readerPasswordFile" -}}/etc/otel-anomaly/secrets/reader-password{{- end }}
{{- define "otel-anomaly-aggregator.readerTokenFile" -}}/etc/otel-anomaly/secrets/reader-token{{- end }}
{{- define "otel-anomaly-aggregator.adminTokenFile" -}}/etc/otel-anomaly/secrets/admin-token{{- end }}
{{- define "otel-anomaly-aggregator.tlsCertFile" -}}/etc/otel-anomaly/tls/tls.crt{{- end }}
{{- define "otel-anomaly-aggregator.tlsKeyFile" -}}/etc/otel-anomaly/tls/tls.key{{- end }}
{{/* A sidecar's token file; `.` is the sidecar entry. */}}
{{- define "otel-anomaly-aggregator.sidecarTokenFile" -}}
{{- printf "/etc/otel-anomaly/sidecars/%s.token" .name }}
{{- end }}

{{/* host:port for a listener; IPv6 hosts get brackets. */}}
{{- define "otel-anomaly-aggregator.listen" -}}
{{- $host := .host -}}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end -}}
{{- printf "%s:%d" $host (int .port) -}}
{{- end }}

{{/* The URL of the dashboard: http.externalUrl, else the first Ingress host, else the Service. */}}
{{- define "otel-anomaly-aggregator.externalUrl" -}}
{{- $v := .Values }}
{{- if $v.http.externalUrl }}
{{- $v.http.externalUrl }}
{{- else if and $v.ingress.enabled $v.ingress.hosts }}
{{- $host := (first $v.ingress.hosts).host }}
{{- $tls := false }}
{{- range $v.ingress.tls }}{{ if has $host (.hosts | default list) }}{{ $tls = true }}{{ end }}{{ end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "otel-anomaly-aggregator.fullname" .) .Release.Namespace (int $v.http.port) }}
{{- end }}
{{- end }}

{{/*
Checks across values, with plain messages (values.schema.json checks each value).
*/}}
{{- define "otel-anomaly-aggregator.validate" -}}
{{- $v := .Values }}
{{- if eq (int $v.grpc.port) (int $v.http.port) }}
{{- fail (printf "grpc.port and http.port must differ (both %d)" (int $v.grpc.port)) }}
{{- end }}
{{- if and $v.grpc.tls.enabled (not $v.grpc.tls.existingSecret) }}
{{- fail "grpc.tls.enabled needs grpc.tls.existingSecret (a kubernetes.io/tls Secret with the push API's certificate and key)" }}
{{- end }}
{{- $r := $v.http.reader }}
{{- if eq $r.type "basic" }}
{{- if not (and $r.username $r.existingSecret) }}
{{- fail "http.reader.type basic needs http.reader.username and http.reader.existingSecret (the Secret holding the password)" }}
{{- end }}
{{- else if eq $r.type "token" }}
{{- if not $r.existingSecret }}
{{- fail "http.reader.type token needs http.reader.existingSecret (the Secret holding the bearer token)" }}
{{- end }}
{{- if $r.username }}
{{- fail "http.reader.username is only used with http.reader.type basic" }}
{{- end }}
{{- else if or $r.username $r.existingSecret }}
{{- fail "http.reader.type is anonymous: remove http.reader.username and http.reader.existingSecret, or set type basic or token" }}
{{- end }}
{{- if and $v.ingress.enabled (eq $r.type "anonymous") (not $v.ingress.allowAnonymous) }}
{{- fail "ingress.enabled with http.reader.type anonymous would publish the dashboard without authentication: set http.reader (basic or token), or ingress.allowAnonymous: true if the Ingress controller authenticates users itself" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (eq $r.type "basic") (not $v.serviceMonitor.basicAuthUsernameKey) }}
{{- fail "serviceMonitor with http.reader.type basic needs serviceMonitor.basicAuthUsernameKey: the key of http.reader.existingSecret that holds the username (Prometheus reads both from the Secret)" }}
{{- end }}
{{- $names := list }}
{{- range $v.sidecars }}
{{- if has .name $names }}
{{- fail (printf "sidecars: name %q is given twice; each sidecar gets its own name and token" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}

{{/*
The aggregator's configuration file. Chart-owned keys are merged over `config`
(values.schema.json keeps `config` from naming them).
*/}}
{{- define "otel-anomaly-aggregator.config" -}}
{{- $v := .Values }}
{{- $host := $v.listenHost }}
{{- $owned := dict "data_dir" $v.persistence.mountPath }}
{{- $grpc := dict "listen" (include "otel-anomaly-aggregator.listen" (dict "host" $host "port" $v.grpc.port)) }}
{{- if $v.grpc.tls.enabled }}
{{- $_ := set $grpc "cert_file" (include "otel-anomaly-aggregator.tlsCertFile" .) }}
{{- $_ := set $grpc "key_file" (include "otel-anomaly-aggregator.tlsKeyFile" .) }}
{{- end }}
{{- $_ := set $owned "grpc" $grpc }}
{{- $http := dict "listen" (include "otel-anomaly-aggregator.listen" (dict "host" $host "port" $v.http.port)) "external_url" (include "otel-anomaly-aggregator.externalUrl" .) }}
{{- $r := $v.http.reader }}
{{- if eq $r.type "basic" }}
{{- $_ := set $http "username" $r.username }}
{{- $_ := set $http "password_file" (include "otel-anomaly-aggregator.readerPasswordFile" .) }}
{{- else if eq $r.type "token" }}
{{- $_ := set $http "token_file" (include "otel-anomaly-aggregator.readerTokenFile" .) }}
{{- else }}
{{- $_ := set $http "anonymous" true }}
{{- end }}
{{- if $v.http.admin.existingSecret }}
{{- $_ := set $http "admin_token_file" (include "otel-anomaly-aggregator.adminTokenFile" .) }}
{{- end }}
{{- $_ := set $owned "http" $http }}
{{- $sidecars := list }}
{{- range $v.sidecars }}
{{- $s := dict "name" .name "environment" .environment "token_file" (include "otel-anomaly-aggregator.sidecarTokenFile" .) }}
{{- with .cluster }}{{ $_ := set $s "cluster" . }}{{ end }}
{{- with .expiresAt }}{{ $_ := set $s "expires_at" . }}{{ end }}
{{- $sidecars = append $sidecars $s }}
{{- end }}
{{- $_ := set $owned "sidecars" $sidecars }}
{{- $alerts := dict "interval" $v.alerts.interval "webhooks" $v.alerts.webhooks }}
{{- if $v.alerts.alertmanager.url }}
{{- $_ := set $alerts "alertmanager" (deepCopy $v.alerts.alertmanager) }}
{{- end }}
{{- $_ := set $owned "alerts" $alerts }}
{{- toYaml (mustMergeOverwrite (deepCopy $v.config) $owned) }}
{{- end }}
