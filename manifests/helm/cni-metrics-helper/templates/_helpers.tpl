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

{{/* SCRAPE_MODE: env.SCRAPE_MODE, else scrapeMode, else auto (lower case, as the daemon reads it).
The Role grants pods/proxy from the same value, so the two cannot disagree. */}}
{{- define "cni-metrics-helper.scrapeMode" -}}
{{- lower (toString (default (default "auto" .Values.scrapeMode) .Values.env.SCRAPE_MODE)) }}
{{- end }}

{{/* A feature with two spellings, env.<key> (the original chart's way) and a structured flag:
"true" when it is on, else empty. env.<key>, when set (an empty value counts as unset, as in the
daemon), wins; true and yes in any case are on. Called with dict "env" .Values.env "key" KEY
"flag" FLAG. */}}
{{- define "cni-metrics-helper.feature" -}}
{{- if and (hasKey .env .key) (ne (toString (index .env .key)) "") }}
{{- if eq (lower (toString (index .env .key))) "true" "yes" }}true{{ end }}
{{- else if .flag }}true{{ end }}
{{- end }}

{{/* LEADER_ELECTION: env.LEADER_ELECTION or leaderElection.enabled. Everything it needs (Lease
RBAC, POD_NAME, replicas, rolling update, PodDisruptionBudget, anti-affinity) follows this value. */}}
{{- define "cni-metrics-helper.leaderElection" -}}
{{- include "cni-metrics-helper.feature" (dict "env" .Values.env "key" "LEADER_ELECTION" "flag" .Values.leaderElection.enabled) }}
{{- end }}

{{/* LEADER_ELECTION_LEASE_NAME: the Lease the chart ships and the Role grants by name. */}}
{{- define "cni-metrics-helper.leaseName" -}}
{{- default "cni-metrics-helper" .Values.env.LEADER_ELECTION_LEASE_NAME }}
{{- end }}

{{/* SUBNET_METRICS: env.SUBNET_METRICS or subnetMetrics.enabled (the ENIConfig ClusterRole and
CW_PER_AZ follow it). */}}
{{- define "cni-metrics-helper.subnetMetrics" -}}
{{- include "cni-metrics-helper.feature" (dict "env" .Values.env "key" "SUBNET_METRICS" "flag" .Values.subnetMetrics.enabled) }}
{{- end }}

{{/* The image tag: image.tag, except that an empty tag or one of the original helper's own
releases (v1.x.y, what an eks-charts values file carries) gives this chart's appVersion: our
images are tagged with our version, never v1.x.y. */}}
{{- define "cni-metrics-helper.tag" -}}
{{- $tag := toString (default "" .Values.image.tag) }}
{{- if or (eq $tag "") (regexMatch `^v1\.[0-9]+\.[0-9]+` $tag) }}
{{- .Chart.AppVersion }}
{{- else }}
{{- $tag }}
{{- end }}
{{- end }}

{{/* The image: image.override, else image.registry:tag, else
<account>.dkr.ecr.<region>.<domain>/cni-metrics-helper:tag when image.account is set, else the
render fails naming the keys (there is no default image a node could pull). Refuses AWS's own
cni-metrics-helper repositories (the EKS add-on registries, public.ecr.aws/eks): that image is the
original helper, which does not answer our probes on PROMETHEUS_PORT and would crash-loop. AWS's
values file sets account 602401143452 and no override: refused, naming image.override. */}}
{{- define "cni-metrics-helper.image" -}}
{{- $tag := include "cni-metrics-helper.tag" . }}
{{- $image := "" }}
{{- $fix := "Set image.override to the image you built and pushed (README: Building and pushing the image), e.g. --set image.override=111122223333.dkr.ecr.us-west-2.amazonaws.com/cni-metrics-helper:" }}
{{- if .Values.image.override }}
{{- $image = toString .Values.image.override }}
{{- else if .Values.image.registry }}
{{- $image = printf "%s:%s" .Values.image.registry $tag }}
{{- else if .Values.image.account }}
{{- $image = printf "%s.dkr.ecr.%s.%s/cni-metrics-helper:%s" (toString .Values.image.account) .Values.image.region .Values.image.domain $tag }}
{{- else }}
{{- fail (printf "no image: none of image.override, image.registry, image.account is set. %s%s (or image.registry to its repository)" $fix .Chart.AppVersion) }}
{{- end }}
{{- if regexMatch `^((602401143452|877085696533|800184023465|533267051163|296578399912|900889452093|491585149902|151610086707|333609536671|121268973566|918309763551|961992271922|900612956339|590381155156|455263428931|066635153087|759879836304|558608220178|761377655185|151742754352|013241004608)\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?|public\.ecr\.aws/eks)/cni-metrics-helper([:@]|$)` $image }}
{{- fail (printf "image %s is in AWS's own cni-metrics-helper repository: that is the original helper, not this one, and it would crash-loop on this chart's probes (port 61681). %s%s (or image.registry to its repository)" $image $fix .Chart.AppVersion) }}
{{- end }}
{{- $image }}
{{- end }}

{{/* Labels that pick this release's pods (PodDisruptionBudget, anti-affinity). */}}
{{- define "cni-metrics-helper.selectorLabels" -}}
k8s-app: cni-metrics-helper
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Deployment's strategy from an updateStrategy value: rollingUpdate only with a type that
takes it, so a values file that sets type Recreate over our RollingUpdate default stays valid. */}}
{{- define "cni-metrics-helper.strategy" -}}
{{- with . }}
strategy:
  {{- with .type }}
  type: {{ . }}
  {{- end }}
  {{- if and .rollingUpdate (ne (toString (default "RollingUpdate" .type)) "Recreate") }}
  rollingUpdate:
    {{- toYaml .rollingUpdate | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
