{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "xray-daemon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "xray-daemon.fullname" -}}
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

{{/*
Chart label value: <name>-<version>.
*/}}
{{- define "xray-daemon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (never add version-dependent labels here).
*/}}
{{- define "xray-daemon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xray-daemon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels of every resource.
*/}}
{{- define "xray-daemon.labels" -}}
helm.sh/chart: {{ include "xray-daemon.chart" . }}
{{ include "xray-daemon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: xray-daemon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "xray-daemon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xray-daemon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap holding cfg.yaml.
*/}}
{{- define "xray-daemon.configMapName" -}}
{{- if .Values.configMap.create }}
{{- include "xray-daemon.fullname" . }}
{{- else }}
{{- required "configMap.existingName is required when configMap.create is false" .Values.configMap.existingName }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "xray-daemon.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
host:port for a socket address; IPv6 hosts get brackets. Call with (list host port).
*/}}
{{- define "xray-daemon.hostPort" -}}
{{- $host := index . 0 }}
{{- $port := index . 1 | int }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/*
resources.limits.memory in MiB (rounded down), or empty when there is no memory limit.
Accepts Kubernetes quantities with the suffixes k, M, G, T, Ki, Mi, Gi, Ti, or plain bytes.
*/}}
{{- define "xray-daemon.memoryLimitMiB" -}}
{{- $limits := (.Values.resources | default dict).limits | default dict }}
{{- $q := get $limits "memory" }}
{{- if $q }}
{{- $s := toString $q }}
{{- if or (kindIs "float64" $q) (kindIs "int64" $q) (kindIs "int" $q) }}
{{- $s = printf "%.0f" (float64 $q) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$" $s) }}
{{- fail (printf "resources.limits.memory %q is not a quantity the chart can size the buffer from (use e.g. 128Mi or 1Gi), or set bufferMemory.sizeMB" $s) }}
{{- end }}
{{- $number := regexFind "^[0-9.]+" $s | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9.]+" $s) $s }}
{{- $factors := dict "" 1.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 }}
{{- divf (mulf $number (get $factors $unit)) 1048576.0 | floor | int }}
{{- end }}
{{- end }}

{{/*
The daemon's buffer budget in MB (-m): bufferMemory.sizeMB, else limitPercent of the memory
limit (at least 3), else empty (the daemon sizes itself).
*/}}
{{- define "xray-daemon.bufferMemoryMB" -}}
{{- $explicit := .Values.bufferMemory.sizeMB | default 0 | int }}
{{- $limitMiB := include "xray-daemon.memoryLimitMiB" . }}
{{- if gt $explicit 0 }}
{{- if and $limitMiB (ge $explicit (int $limitMiB)) }}
{{- fail (printf "bufferMemory.sizeMB (%d) must be below the container memory limit (%s MiB)" $explicit $limitMiB) }}
{{- end }}
{{- $explicit }}
{{- else if $limitMiB }}
{{- max 3 (div (mul (int $limitMiB) (int .Values.bufferMemory.limitPercent)) 100) }}
{{- end }}
{{- end }}

{{/*
The daemon's shutdown deadline in seconds (--shutdown-timeout).
*/}}
{{- define "xray-daemon.shutdownTimeoutSeconds" -}}
{{- $grace := .Values.terminationGracePeriodSeconds | int }}
{{- $timeout := .Values.shutdownTimeoutSeconds | default 0 | int }}
{{- if eq $timeout 0 }}
{{- $timeout = max 1 (sub $grace 5) }}
{{- end }}
{{- if ge $timeout $grace }}
{{- fail (printf "shutdownTimeoutSeconds (%d) must be below terminationGracePeriodSeconds (%d), or the flush is cut by SIGKILL" $timeout $grace) }}
{{- end }}
{{- $timeout }}
{{- end }}

{{/*
Whether the pod binds ports on the node (hostPort or hostNetwork) in this mode.
*/}}
{{- define "xray-daemon.usesNodePorts" -}}
{{- if eq .Values.mode "daemonset" }}
{{- if or .Values.hostNetwork (gt (int .Values.ports.udp.hostPort) 0) (gt (int .Values.ports.tcp.hostPort) 0) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The daemon's cfg.yaml, as mounted from the ConfigMap.
*/}}
{{- define "xray-daemon.daemonConfig" -}}
Version: 2
{{- with .Values.config }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Cross-field checks the schema cannot express; fail with a message naming the values to fix.
*/}}
{{- define "xray-daemon.validate" -}}
{{- if and (eq .Values.mode "deployment") (not .Values.service.enabled) }}
{{- fail "mode=deployment needs service.enabled=true: a Deployment has no hostPort, so the Service is how apps reach it" }}
{{- end }}
{{- if and (eq .Values.mode "deployment") .Values.hostNetwork }}
{{- fail "hostNetwork is for mode=daemonset: a Deployment is reached through its Service" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled=true (or use podMonitor.enabled, which needs no Service)" }}
{{- end }}
{{- if and (eq .Values.mode "daemonset") (eq .Values.updateStrategy.type "Recreate") }}
{{- fail "updateStrategy.type Recreate is for mode=deployment; a DaemonSet takes RollingUpdate or OnDelete" }}
{{- end }}
{{- if and (eq .Values.mode "deployment") (eq .Values.updateStrategy.type "OnDelete") }}
{{- fail "updateStrategy.type OnDelete is for mode=daemonset; a Deployment takes RollingUpdate or Recreate" }}
{{- end }}
{{- $surge := toString ((.Values.updateStrategy.rollingUpdate | default dict).maxSurge | default 0) }}
{{- if and (include "xray-daemon.usesNodePorts" .) (not (has $surge (list "0" "0%"))) }}
{{- fail (printf "updateStrategy.rollingUpdate.maxSurge (%s) cannot be used with hostPort or hostNetwork: the surge pod cannot bind the node's port while the old pod runs" $surge) }}
{{- end }}
{{- if and (not .Values.configMap.create) .Values.configMap.rollOnChange }}
{{- fail "configMap.rollOnChange needs configMap.create=true: the chart cannot checksum a ConfigMap it does not render" }}
{{- end }}
{{- end }}

{{/*
The pod template shared by the DaemonSet and the Deployment.
*/}}
{{- define "xray-daemon.podTemplate" -}}
{{- $bufferMB := include "xray-daemon.bufferMemoryMB" . }}
{{- $daemonset := eq .Values.mode "daemonset" -}}
metadata:
  labels:
    {{- include "xray-daemon.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or .Values.podAnnotations .Values.configMap.rollOnChange }}
  annotations:
    {{- if .Values.configMap.rollOnChange }}
    checksum/config: {{ include "xray-daemon.daemonConfig" . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "xray-daemon.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- if and $daemonset .Values.hostNetwork }}
  hostNetwork: true
  {{- end }}
  dnsPolicy: {{ .Values.dnsPolicy | default (ternary "ClusterFirstWithHostNet" "ClusterFirst" (and $daemonset .Values.hostNetwork)) }}
  {{- with .Values.dnsConfig }}
  dnsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds | int }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: xray-daemon
      image: {{ include "xray-daemon.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        - /usr/bin/xray
      args:
        - -c
        - {{ printf "%s/cfg.yaml" (trimSuffix "/" .Values.configMap.mountPath) }}
        - -b
        - {{ include "xray-daemon.hostPort" (list .Values.bindAddress .Values.ports.udp.containerPort) | quote }}
        - -t
        - {{ include "xray-daemon.hostPort" (list .Values.bindAddress .Values.ports.tcp.containerPort) | quote }}
        - --admin-address
        - {{ include "xray-daemon.hostPort" (list .Values.bindAddress .Values.ports.admin.containerPort) | quote }}
        - --shutdown-timeout
        - {{ printf "%ss" (include "xray-daemon.shutdownTimeoutSeconds" .) | quote }}
        {{- if $bufferMB }}
        - -m
        - {{ $bufferMB | quote }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: xray-udp
          containerPort: {{ .Values.ports.udp.containerPort | int }}
          protocol: UDP
          {{- if $daemonset }}
          {{- if .Values.hostNetwork }}
          hostPort: {{ .Values.ports.udp.containerPort | int }}
          {{- else if gt (int .Values.ports.udp.hostPort) 0 }}
          hostPort: {{ .Values.ports.udp.hostPort | int }}
          {{- end }}
          {{- end }}
        - name: xray-tcp
          containerPort: {{ .Values.ports.tcp.containerPort | int }}
          protocol: TCP
          {{- if $daemonset }}
          {{- if .Values.hostNetwork }}
          hostPort: {{ .Values.ports.tcp.containerPort | int }}
          {{- else if gt (int .Values.ports.tcp.hostPort) 0 }}
          hostPort: {{ .Values.ports.tcp.hostPort | int }}
          {{- end }}
          {{- end }}
        - name: admin
          containerPort: {{ .Values.ports.admin.containerPort | int }}
          protocol: TCP
          {{- if and $daemonset .Values.hostNetwork }}
          hostPort: {{ .Values.ports.admin.containerPort | int }}
          {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.lifecycle }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: {{ .Values.configMap.mountPath }}
          readOnly: true
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- with .Values.extraContainers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "xray-daemon.configMapName" . }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if not $daemonset }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
{{- end }}
