{{/* Name of the chart, or nameOverride. */}}
{{- define "cni-metrics-helper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: fullnameOverride, else release-name (or the release name alone when it
contains the chart name). */}}
{{- define "cni-metrics-helper.fullname" -}}
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

{{- define "cni-metrics-helper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "cni-metrics-helper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cni-metrics-helper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cni-metrics-helper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace whose aws-node pods the daemon watches (K8S_NAMESPACE). */}}
{{- define "cni-metrics-helper.watchNamespace" -}}
{{- default "kube-system" .Values.env.K8S_NAMESPACE }}
{{- end }}

{{/* SCRAPE_MODE: env.SCRAPE_MODE, else scrapeMode, else auto (lower case). */}}
{{- define "cni-metrics-helper.scrapeMode" -}}
{{- default (default "auto" .Values.scrapeMode) .Values.env.SCRAPE_MODE }}
{{- end }}

{{- define "cni-metrics-helper.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.override }}
{{- .Values.image.override }}
{{- else if .Values.image.registry }}
{{- printf "%s:%s" .Values.image.registry $tag }}
{{- else }}
{{- printf "%s.dkr.ecr.%s.%s/cni-metrics-helper:%s" .Values.image.account .Values.image.region .Values.image.domain $tag }}
{{- end }}
{{- end }}
