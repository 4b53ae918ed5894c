{{/* Names, labels, images, and the checks that fail fast on conflicting values. */}}

{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: the release name, plus the chart name unless it already holds it. */}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "gateway"). */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end -}}

{{/* A component's selector: immutable in Deployments and StatefulSets, so kept short. */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tessera.redisSecretName" -}}
{{- default (printf "%s-redis" (include "tessera.fullname" .)) .Values.redis.bundled.existingSecret -}}
{{- end -}}

{{- define "tessera.signingSecretName" -}}
{{- default (printf "%s-signing" (include "tessera.fullname" .)) .Values.signingSecret.existingSecret -}}
{{- end -}}

{{- define "tessera.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "tessera.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* "true" when the values give API keys; else the chart generates the admin's key. */}}
{{- define "tessera.apiKeysGiven" -}}
{{- $keys := .Values.apiKeys -}}
{{- if or $keys.existingSecret $keys.sha256 $keys.adminSha256 }}true{{ end -}}
{{- end -}}

{{/* The queue URL with $(REDIS_PASSWORD) where the password goes (Kubernetes expands it from
the variable that "tessera.redisEnv" declares first). */}}
{{- define "tessera.queueUrl" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "redis://:$(REDIS_PASSWORD)@%s-redis.%s.svc:6379/0" (include "tessera.fullname" .) .Release.Namespace -}}
{{- else if .Values.redis.external.passwordSecret -}}
{{- $parts := urlParse .Values.redis.external.url -}}
{{- printf "%s://:$(REDIS_PASSWORD)@%s%s" $parts.scheme $parts.host $parts.path -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* Where results live with storage.type s3, for the gateway and the operator's workers. */}}
{{- define "tessera.s3Url" -}}
{{- printf "s3://%s/%s" .Values.storage.s3.bucket .Values.storage.s3.prefix | trimSuffix "/" -}}
{{- end -}}

{{/* REDIS_PASSWORD, which the queue URL refers to, when there is a password. */}}
{{- define "tessera.redisEnv" -}}
{{- if .Values.redis.bundled.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tessera.redisSecretName" . }}
      key: password
{{- else if .Values.redis.external.passwordSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret }}
      key: {{ .Values.redis.external.passwordKey }}
{{- end }}
{{- end -}}

{{/* A Secret value kept across upgrades: the live object's, else a new random one. */}}
{{- define "tessera.keptRandom" -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{- index $live.data .key | b64dec -}}
{{- else -}}
{{- printf "%s%s" (default "" .prefix) (randAlphaNum 40) -}}
{{- end -}}
{{- end -}}

{{/* Conflicting or missing values fail the render with a message naming them. */}}
{{- define "tessera.validate" -}}
{{- $redis := .Values.redis -}}
{{- if and $redis.bundled.enabled $redis.external.url -}}
{{- fail "ERROR: redis.bundled.enabled and redis.external.url are both set: choose one job queue (set redis.bundled.enabled=false to use the external Redis)" -}}
{{- end -}}
{{- if not (or $redis.bundled.enabled $redis.external.url) -}}
{{- fail "ERROR: no job queue: set redis.external.url, or redis.bundled.enabled=true" -}}
{{- end -}}
{{- if $redis.external.url -}}
{{- if not (regexMatch "^rediss?://[^/@]+(/[0-9]+)?$" $redis.external.url) -}}
{{- fail (printf "ERROR: redis.external.url must be redis://HOST:PORT[/DB] or rediss://... without credentials (the password comes from redis.external.passwordSecret), not %q" $redis.external.url) -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.storage.type "s3" -}}
{{- if not .Values.storage.s3.bucket -}}
{{- fail "ERROR: storage.type is s3 but storage.s3.bucket is empty" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.apiKeys.existingSecret (or .Values.apiKeys.sha256 .Values.apiKeys.adminSha256) -}}
{{- fail "ERROR: apiKeys.existingSecret is set together with apiKeys.sha256 or apiKeys.adminSha256: give the keys one way" -}}
{{- end -}}
{{- range $hash := .Values.apiKeys.adminSha256 -}}
{{- if has $hash $.Values.apiKeys.sha256 -}}
{{- fail (printf "ERROR: apiKeys.sha256 and apiKeys.adminSha256 both list %s: list an admin key in adminSha256 only" $hash) -}}
{{- end -}}
{{- end -}}
{{- $as := .Values.gateway.autoscaling -}}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- fail (printf "ERROR: gateway.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.gateway.ingress.enabled (not .Values.gateway.ingress.host) -}}
{{- fail "ERROR: gateway.ingress.enabled needs gateway.ingress.host" -}}
{{- end -}}
{{- $mon := .Values.monitoring -}}
{{- range $what := list "serviceMonitor" "prometheusRule" -}}
{{- if and (index $mon $what).enabled (not $mon.metrics.enabled) -}}
{{- fail (printf "ERROR: monitoring.%s.enabled needs monitoring.metrics.enabled (the gateway and the operator serve no metrics without it)" $what) -}}
{{- end -}}
{{- end -}}
{{- if and $mon.metrics.enabled (eq (int $mon.metrics.gatewayPort) (int .Values.gateway.port)) -}}
{{- fail (printf "ERROR: monitoring.metrics.gatewayPort and gateway.port are both %d" (int .Values.gateway.port)) -}}
{{- end -}}
{{- $exporter := .Values.usageExporter -}}
{{- if and $exporter.enabled (not (regexMatch "^https?://[^/]+" $exporter.to)) -}}
{{- fail (printf "ERROR: usageExporter.enabled needs usageExporter.to, the receiver's http(s) URL (e.g. http://openmeter/api/v1/events), not %q" $exporter.to) -}}
{{- end -}}
{{- if and $mon.metrics.enabled (eq (int $mon.metrics.operatorPort) 8081) -}}
{{- fail "ERROR: monitoring.metrics.operatorPort 8081 is the operator's liveness port" -}}
{{- end -}}
{{- end -}}

{{/* The base URL clients reach: publicUrl, the Ingress host, or a local port-forward. */}}
{{- define "tessera.publicUrl" -}}
{{- if .Values.gateway.publicUrl -}}
{{- .Values.gateway.publicUrl -}}
{{- else if .Values.gateway.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.gateway.ingress.tlsSecretName "")) .Values.gateway.ingress.host -}}
{{- else -}}
http://127.0.0.1:8000
{{- end -}}
{{- end -}}
