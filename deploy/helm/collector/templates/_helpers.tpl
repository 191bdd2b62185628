{{/* The release's full name, the name of every object (63 characters at most). */}}
{{- define "collector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "collector.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "collector.labels" -}}
{{ include "collector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "collector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "collector.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The capabilities of the least-privilege mode: exactly what the configuration needs, each for a
measured reason (collector/src/capabilities.rs, which refuses to start without one and names
it; tests/tests/image.rs runs the image with exactly these and with each one removed).
*/}}
{{- define "collector.capabilities" -}}
- BPF
- PERFMON
{{- if ne (toString .Values.config.http_socket) "false" }}
- NET_ADMIN
{{- end }}
{{- $socket := ne (toString .Values.config.http_socket) "false" }}
{{- $gohttp := toString (default "auto" .Values.config.go_http_uprobes) }}
{{- if or (eq $gohttp "all") (and $socket (eq $gohttp "auto")) (eq (toString .Values.config.go_grpc_uprobes) "all") }}
- SYS_PTRACE
- DAC_READ_SEARCH
{{- end }}
{{- end -}}

{{/*
A map as TOML: the collector's file reads integers (max_workloads, buckets) as integers, and
Helm's own toToml writes every number of a values file as a float ("2000.0"), which the
collector rightly refuses. Whole numbers are written as integers (a float field reads them too).
*/}}
{{- define "collector.tomlValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "bool" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "collector.tomlValue" $v }}{{ end -}}]
{{- else -}}
{{- toJson (toString .) -}}
{{- end -}}
{{- end -}}

{{- define "collector.tomlTable" -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := .table }}{{ if not (kindIs "map" $v) }}
{{ $k }} = {{ include "collector.tomlValue" $v }}
{{- end }}{{ end }}
{{- range $k, $v := .table }}{{ if kindIs "map" $v }}

[{{ $prefix }}{{ $k }}]
{{- include "collector.tomlTable" (dict "table" $v "prefix" (printf "%s%s." $prefix $k)) }}
{{- end }}{{ end }}
{{- end -}}
