{{/*
Names, labels and the shared pod pieces. The KubeRay helpers mirror tightfit/kube/manifests.py line for line
(tests/test_helm.py renders the chart and compares with the Python-built objects): change both together.
*/}}

{{- define "tightfit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tightfit.fullname" -}}
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

{{/* A KubeRay object name: KubeRay derives pod and service names from it, so keep it <= 47 characters. */}}
{{- define "tightfit.rayName" -}}
{{- printf "%s-%s" (include "tightfit.fullname" .root) .suffix | trunc 47 | trimSuffix "-" }}
{{- end }}

{{- define "tightfit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "tightfit.labels" -}}
app.kubernetes.io/name: {{ include "tightfit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "tightfit.chart" .root }}
{{- end }}

{{- define "tightfit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tightfit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tightfit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tightfit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "<repository>:<tag>", pinned as "<repository>:<tag>@<digest>" when image.digest is set. */}}
{{- define "tightfit.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}{{ with .Values.image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/* The PVC holds the SQLite file and/or the artifacts when either of them lives on a volume. */}}
{{- define "tightfit.mlflowNeedsVolume" -}}
{{- if or (eq .Values.mlflow.backendStore.type "sqlite") (eq .Values.mlflow.artifactStore.type "pvc") }}true{{ end }}
{{- end }}

{{- define "tightfit.mlflowClaimName" -}}
{{- default (printf "%s-mlflow" (include "tightfit.fullname" .)) .Values.mlflow.persistence.existingClaim }}
{{- end }}

{{- define "tightfit.mlflowUri" -}}
{{- printf "http://%s-mlflow:%v" (include "tightfit.fullname" .) .Values.mlflow.service.port }}
{{- end }}

{{/* Pod-level security settings of every pod (tightfit.kube.manifests.pod_security_context). */}}
{{- define "tightfit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security settings of every container (tightfit.kube.manifests.container_security_context). */}}
{{- define "tightfit.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
One Ray pod template (tightfit.kube.manifests._pod_template). Call with
(dict "root" $ "container" "ray-head" "size" $head "head" true "component" "rayjob" "restartPolicy" "").
*/}}
{{- define "tightfit.rayPodTemplate" -}}
{{- $root := .root }}
{{- $env := dict "HOME" "/tmp" "RAY_USAGE_STATS_ENABLED" "0" "MLFLOW_DISABLE_TELEMETRY" "true" }}
{{- if eq .component "rayservice" }}
{{- /* Ray Serve's throughput-optimized mode and tightfit's proxy middleware (tightfit.settings.SERVE_RAY_ENV),
the plan's body cap and upload time for that middleware (ServePlan.proxy_env); ray.env overrides them */}}
{{- $_ := set $env "RAY_SERVE_THROUGHPUT_OPTIMIZED" "1" }}
{{- $_ := set $env "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH" "tightfit.serve.proxy:middlewares" }}
{{- $cap := 0 }}{{- $upload := 0.0 }}{{- $plans := 0 }}
{{- range $app := $root.Values.rayService.serveConfig.applications }}
{{- if and $app.args (kindIs "map" $app.args.plan) (hasKey ($app.args.plan | default dict) "max_request_bytes") }}
{{- $plans = add1 $plans }}
{{- $cap = max $cap (int64 $app.args.plan.max_request_bytes) }}
{{- $upload = maxf $upload (float64 ($app.args.plan.request_timeout_s | default 60.0)) }}
{{- end }}
{{- end }}
{{- if $plans }}
{{- $_ := set $env "TIGHTFIT_MAX_REQUEST_BYTES" (toString $cap) }}
{{- $_ := set $env "TIGHTFIT_BODY_TIMEOUT_S" (toString $upload) }}
{{- end }}
{{- end }}
{{- range $k, $v := $root.Values.ray.env }}
{{- $_ := set $env $k (toString $v) }}
{{- end }}
{{- $secretEnv := dict }}
{{- if $root.Values.mlflow.enabled }}
{{- $_ := set $env "MLFLOW_TRACKING_URI" (include "tightfit.mlflowUri" $root) }}
{{- $auth := $root.Values.mlflow.auth }}
{{- if $auth.enabled }}
{{- $_ := set $secretEnv "MLFLOW_TRACKING_USERNAME" (list $auth.existingSecret $auth.usernameKey) }}
{{- $_ := set $secretEnv "MLFLOW_TRACKING_PASSWORD" (list $auth.existingSecret $auth.passwordKey) }}
{{- end }}
{{- end }}
metadata:
  labels:
    {{- include "tightfit.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  serviceAccountName: {{ include "tightfit.serviceAccountName" $root }}
  securityContext:
    {{- include "tightfit.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $root.Values.ray.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.ray.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "tightfit.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env:
        {{- range $k, $v := $env }}
        - name: {{ $k }}
          value: {{ $v | quote }}
        {{- end }}
        {{- range $k, $ref := $secretEnv }}
        - name: {{ $k }}
          valueFrom:
            secretKeyRef:
              name: {{ index $ref 0 }}
              key: {{ index $ref 1 }}
        {{- end }}
      {{- if .head }}
      ports:
        - name: gcs
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        - name: serve
          containerPort: 8000
      {{- end }}
      resources:
        {{- range $which := list "requests" "limits" }}
        {{ $which }}:
          cpu: {{ $.size.cpu | toString | quote }}
          memory: {{ $.size.memory | quote }}
          {{- if gt (int (default 0 $.size.gpu)) 0 }}
          nvidia.com/gpu: {{ int $.size.gpu }}
          {{- end }}
        {{- end }}
      securityContext:
        {{- include "tightfit.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
  volumes:
    - name: tmp
      emptyDir: {}
    # Ray's object store lives in shared memory; the container default (64 MiB) is too small.
    - name: dshm
      emptyDir:
        medium: Memory
{{- end }}

{{/*
A RayCluster spec (tightfit.kube.manifests.raycluster_spec) for one section of values: rayCluster, rayJob or rayService.
Call with (dict "root" $ "section" .Values.rayJob "component" "rayjob"); the section's head/workers
override ray.head/ray.workers key by key.
*/}}
{{- define "tightfit.rayClusterSpec" -}}
{{- $root := .root }}
{{- $ray := $root.Values.ray }}
{{- $head := mergeOverwrite (deepCopy $ray.head) (deepCopy (default dict .section.head)) }}
{{- $workers := mergeOverwrite (deepCopy $ray.workers) (deepCopy (default dict .section.workers)) }}
{{- if or (lt (int $workers.replicas) (int $workers.minReplicas)) (gt (int $workers.replicas) (int $workers.maxReplicas)) }}
{{- fail (printf "workers[%s]: need minReplicas <= replicas <= maxReplicas, got %v <= %v <= %v" $workers.groupName $workers.minReplicas $workers.replicas $workers.maxReplicas) }}
{{- end }}
rayVersion: {{ $ray.version | quote }}
enableInTreeAutoscaling: {{ $ray.autoscaling.enabled }}
{{- if $ray.autoscaling.enabled }}
autoscalerOptions:
  idleTimeoutSeconds: {{ int $ray.autoscaling.idleTimeoutSeconds }}
  securityContext:
    {{- include "tightfit.containerSecurityContext" $root | nindent 4 }}
{{- end }}
authOptions:
  mode: {{ $ray.auth.mode }}
  {{- with $ray.auth.secretName }}
  secretName: {{ . }}
  {{- end }}
headGroupSpec:
  rayStartParams:
    {{- range $k, $v := $head.rayStartParams }}
    {{ $k }}: {{ $v | toString | quote }}
    {{- else }} {}
    {{- end }}
  template:
    {{- include "tightfit.rayPodTemplate" (dict "root" $root "container" "ray-head" "size" $head "head" true "component" .component) | trim | nindent 4 }}
workerGroupSpecs:
  - groupName: {{ $workers.groupName }}
    replicas: {{ int $workers.replicas }}
    minReplicas: {{ int $workers.minReplicas }}
    maxReplicas: {{ int $workers.maxReplicas }}
    rayStartParams:
      {{- range $k, $v := $workers.rayStartParams }}
      {{ $k }}: {{ $v | toString | quote }}
      {{- else }} {}
      {{- end }}
    template:
      {{- include "tightfit.rayPodTemplate" (dict "root" $root "container" "ray-worker" "size" $workers "head" false "component" .component) | trim | nindent 6 }}
{{- end }}
