{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "sandpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix: fullnameOverride, else the release name (plus the chart
name when the release name does not contain it). Truncated to leave room for
the longest suffix ("-controller-metrics").
*/}}
{{- define "sandpool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespace of every namespaced object.
*/}}
{{- define "sandpool.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "sandpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Argument: (dict "ctx" $ "component" "controller").
*/}}
{{- define "sandpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandpool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Standard labels. Argument: (dict "ctx" $ "component" "controller"); the
component may be omitted.
*/}}
{{- define "sandpool.labels" -}}
helm.sh/chart: {{ include "sandpool.chart" .ctx }}
{{ include "sandpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: sandpool
{{- end }}

{{/*
Image reference. Argument: (dict "ctx" $ "image" .Values.x.image); an empty
tag means the chart's appVersion.
*/}}
{{- define "sandpool.image" -}}
{{- printf "%s:%s" .image.repository (toString (.image.tag | default .ctx.Chart.AppVersion)) }}
{{- end }}

{{/*
Names of the components' objects.
*/}}
{{- define "sandpool.controller.fullname" -}}
{{- printf "%s-controller" (include "sandpool.fullname" .) }}
{{- end }}

{{- define "sandpool.server.fullname" -}}
{{- printf "%s-server" (include "sandpool.fullname" .) }}
{{- end }}

{{- define "sandpool.nodeAgent.fullname" -}}
{{- printf "%s-node-agent" (include "sandpool.fullname" .) }}
{{- end }}

{{/*
ServiceAccount of the controller: rbac.serviceAccount.name, else
<fullname>-controller when the chart creates it, else "default".
*/}}
{{- define "sandpool.controller.serviceAccountName" -}}
{{- if .Values.rbac.serviceAccount.create }}
{{- default (include "sandpool.controller.fullname" .) .Values.rbac.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.rbac.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the node agent: <fullname>-node-agent when the chart creates
ServiceAccounts, else the controller's.
*/}}
{{- define "sandpool.nodeAgent.serviceAccountName" -}}
{{- if .Values.rbac.serviceAccount.create }}
{{- include "sandpool.nodeAgent.fullname" . }}
{{- else }}
{{- include "sandpool.controller.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/*
Secret holding the gateway API key ("" when there is none).
*/}}
{{- define "sandpool.server.apiKeySecretName" -}}
{{- $cfg := .Values.server.config.server }}
{{- if $cfg.existingSecret }}
{{- $cfg.existingSecret }}
{{- else if $cfg.apiKey }}
{{- include "sandpool.server.fullname" . }}
{{- end }}
{{- end }}

{{/*
Key of the API key in that Secret.
*/}}
{{- define "sandpool.server.apiKeySecretKey" -}}
{{- if .Values.server.config.server.existingSecret }}
{{- .Values.server.config.server.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/*
Secret holding the service token, the bearer token of sandpool's internal gRPC
calls (gateway -> controller -> node agent): serviceToken.existingSecret, else
<fullname>-service-token, created by the chart (service-token-secret.yaml).
*/}}
{{- define "sandpool.serviceToken.secretName" -}}
{{- $st := .Values.serviceToken | default dict }}
{{- if $st.existingSecret }}
{{- $st.existingSecret }}
{{- else }}
{{- printf "%s-service-token" (include "sandpool.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Key of the service token in that Secret.
*/}}
{{- define "sandpool.serviceToken.secretKey" -}}
{{- $st := .Values.serviceToken | default dict }}
{{- if $st.existingSecret }}
{{- $st.existingSecretKey | default "token" }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{/* SANDPOOL_SERVICE_TOKEN env of every sandpool container. */}}
{{- define "sandpool.serviceTokenEnv" -}}
- name: SANDPOOL_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sandpool.serviceToken.secretName" . }}
      key: {{ include "sandpool.serviceToken.secretKey" . }}
{{- end }}

{{/*
Pod securityContext of the non-privileged components (controller, gateway).
*/}}
{{- define "sandpool.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container securityContext of the non-privileged components.
*/}}
{{- define "sandpool.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The default pool: the same entry as pools[0] in values.yaml (k8s-check.sh
checks they agree). `--set pools[0].x=y` replaces the whole pools list with
[{x: y}], so the first entry falls back to this for every field it lacks, and
every entry falls back to its capacitySpec fields.
*/}}
{{- define "sandpool.defaultPool" -}}
name: agent-pool
enabled: true
template:
  spec:
    containers:
      - name: sandbox-container
        image: python:3.11-slim
        command: ["sleep", "infinity"]
capacitySpec:
  bufferMin: 2
  bufferMax: 5
  poolMin: 2
  poolMax: 20
{{- end }}

{{/*
The pools to create: a list of complete entries (name, template, capacitySpec)
with the defaults above applied, disabled entries left out.
*/}}
{{- define "sandpool.pools" -}}
{{- $default := include "sandpool.defaultPool" . | fromYaml }}
{{- $pools := list }}
{{- $seen := dict }}
{{- range $i, $entry := .Values.pools }}
{{- if or (not (hasKey $entry "enabled")) $entry.enabled }}
{{- $name := $entry.name }}
{{- if and (not $name) (eq $i 0) }}{{ $name = $default.name }}{{ end }}
{{- if not $name }}
{{- fail (printf "pools[%d]: name is required" $i) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "pools[%d]: duplicate pool name %q" $i $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- $template := $entry.template }}
{{- if and (not (hasKey $entry "template")) (eq $i 0) }}{{ $template = $default.template }}{{ end }}
{{- if not $template }}
{{- fail (printf "pools[%d] (%s): template is required" $i $name) }}
{{- end }}
{{- $cap := dict }}
{{- $given := $entry.capacitySpec | default dict }}
{{- range $k := list "bufferMin" "bufferMax" "poolMin" "poolMax" }}
{{- $_ := set $cap $k (int64 (ternary (get $given $k) (get $default.capacitySpec $k) (hasKey $given $k))) }}
{{- end }}
{{- if gt $cap.bufferMin $cap.bufferMax }}
{{- fail (printf "pools[%d] (%s): capacitySpec.bufferMin (%d) > bufferMax (%d)" $i $name $cap.bufferMin $cap.bufferMax) }}
{{- end }}
{{- if gt $cap.poolMin $cap.poolMax }}
{{- fail (printf "pools[%d] (%s): capacitySpec.poolMin (%d) > poolMax (%d)" $i $name $cap.poolMin $cap.poolMax) }}
{{- end }}
{{- $pools = append $pools (dict "name" $name "template" $template "capacitySpec" $cap) }}
{{- end }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/* OTEL_* env of every sandpool container (nothing when export is off). */}}
{{- define "sandpool.otelEnv" -}}
{{- with .Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | default "parentbased_always_on" | quote }}
{{- if .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The conversion webhook (agentSandbox.conversionWebhook): its Service and
Secret names, and its certificate — self-signed at install (a CA and a
serving certificate for the Service's DNS names, reused from the existing
Secret on upgrade), generated once per rendering and shared by the Secret and
the CRDs' caBundle. Under cert-manager the Certificate fills the Secret and
the CRDs get the CA injected.
*/}}
{{- define "sandpool.webhook.serviceName" -}}
{{- printf "%s-conversion-webhook" (include "sandpool.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sandpool.webhook.secretName" -}}
{{- printf "%s-conversion-webhook-tls" (include "sandpool.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sandpool.webhook.certs" -}}
{{- if not (hasKey .Values "sandpoolWebhookCerts") }}
{{- $ns := include "sandpool.namespace" . }}
{{- $svc := include "sandpool.webhook.serviceName" . }}
{{- $old := lookup "v1" "Secret" $ns (include "sandpool.webhook.secretName" .) }}
{{- $certs := dict }}
{{- if and $old (index ($old.data | default dict) "ca.crt") }}
{{- $certs = dict "ca" (index $old.data "ca.crt" | b64dec) "cert" (index $old.data "tls.crt" | b64dec) "key" (index $old.data "tls.key" | b64dec) }}
{{- else }}
{{- $ca := genCA (printf "%s-ca" $svc) 3650 }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $names 3650 $ca }}
{{- $certs = dict "ca" $ca.Cert "cert" $cert.Cert "key" $cert.Key }}
{{- end }}
{{- $_ := set .Values "sandpoolWebhookCerts" $certs }}
{{- end }}
{{- toJson (get .Values "sandpoolWebhookCerts") }}
{{- end }}

{{/* spec.conversion of an agent-sandbox CRD when the webhook is enabled. */}}
{{- define "sandpool.webhook.conversion" -}}
strategy: Webhook
webhook:
  conversionReviewVersions: ["v1"]
  clientConfig:
    service:
      name: {{ include "sandpool.webhook.serviceName" . }}
      namespace: {{ include "sandpool.namespace" . }}
      path: /convert
      port: 443
    {{- if not .Values.agentSandbox.conversionWebhook.certManager.enabled }}
    caBundle: {{ (include "sandpool.webhook.certs" . | fromJson).ca | b64enc }}
    {{- end }}
{{- end }}
