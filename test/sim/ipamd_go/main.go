// ipamd_go: one node's ipamD metrics endpoint, built from the real Prometheus Go library.
//
// The collectors are those ipamD v1.23.1 registers (amazon-vpc-cni-k8s
// utils/prometheusmetrics/prometheusmetrics.go and pkg/version/info.go): the same names, help
// texts, types, label names, and a summary with no objectives. They sit on client_golang's
// default registry, so the real go_* and process_* families come along, and are served by
// promhttp.Handler() on net/http with ipamD's server settings (5 s read and write timeouts).
// One process is one node: a restart is a new process with its own process_start_time_seconds.
//
// A test drives it on stdin, one JSON object per line, and reads one JSON line back for each:
//
//	{"op":"set","name":"awscni_ip_max","value":29}                  gauge Set
//	{"op":"add","name":"awscni_ipamd_error_count","labels":{"fn":"x"},"value":2}
//	                                                                counter Add (0 creates the series)
//	{"op":"observe","name":"awscni_aws_api_latency_ms","labels":{...},"value":12.5}
//	{"op":"served"}   the scrapes answered since the last "served", oldest first: when, the
//	                  request's Accept-Encoding, the response head as it went on the wire
//	                  (status, Content-Encoding, Transfer-Encoding, Content-Length), the bytes
//	                  written to the socket, and every awscni_* sample and
//	                  process_start_time_seconds exactly as served
//	{"op":"exit"}     stops accepting, lets in-flight scrapes finish, answers with the last
//	                  scrapes and exits (end of stdin does the same without the answer)
//
// Started with -listen 127.x.y.z:port (port 0 picks one); the first stdout line is
// {"addr":..., "pid":..., "process_start_time_seconds":...}.
//
// Build offline from Debian's packages:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o ipamd_go .
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// ipamdVersion is the awscni_build_info version label.
const ipamdVersion = "v1.23.1"

// family is one registered ipamD collector, reached by name from the control channel.
type family struct {
	kind   string // gauge, counter, summary, histogram
	labels []string
	c      prometheus.Collector
}

var families = map[string]*family{}

func def(kind, name, help string, labels ...string) {
	var c prometheus.Collector
	switch kind {
	case "gauge":
		if len(labels) == 0 {
			c = prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		} else {
			c = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		}
	case "counter":
		if len(labels) == 0 {
			c = prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		} else {
			c = prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		}
	case "summary": // no Objectives: _sum and _count only, as ipamD's
		c = prometheus.NewSummaryVec(prometheus.SummaryOpts{Name: name, Help: help}, labels)
	case "histogram": // default buckets, as ipamD's
		c = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help}, labels)
	}
	families[name] = &family{kind: kind, labels: labels, c: c}
	prometheus.MustRegister(c)
}

// registerIpamd registers ipamD's collectors in the release's order (PrometheusRegister, then
// the build info of aws-k8s-agent's main).
func registerIpamd() {
	def("counter", "awscni_ipamd_error_count", "The number of errors encountered in ipamd", "fn")
	def("gauge", "awscni_ipamd_action_inprogress", "The number of ipamd actions in progress", "fn")
	def("gauge", "awscni_eni_max", "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs")
	def("gauge", "awscni_ip_max", "The maximum number of IP addresses that can be allocated to the instance")
	def("counter", "awscni_reconcile_count", "The number of times ipamd reconciles on ENIs and IP/Prefix addresses", "fn")
	def("counter", "awscni_add_ip_req_count", "The number of add IP address requests")
	def("counter", "awscni_del_ip_req_count", "The number of delete IP address requests", "reason")
	def("counter", "awscni_pod_eni_error_count", "The number of errors encountered for pod ENIs", "fn")
	def("summary", "awscni_aws_api_latency_ms", "AWS API call latency in ms", "api", "error", "status")
	def("counter", "awscni_aws_api_error_count", "The number of times AWS API returns an error", "api", "error")
	def("counter", "awscni_aws_utils_error_count", "The number of errors not handled in awsutils library", "fn", "error")
	def("counter", "awscni_ec2api_req_count", "The number of requests made to EC2 APIs by CNI", "fn")
	def("counter", "awscni_ec2api_error_count", "The number of failed EC2 APIs requests", "fn")
	def("gauge", "awscni_eni_allocated", "The number of ENIs allocated")
	def("gauge", "awscni_total_ip_addresses", "The total number of IP addresses")
	def("gauge", "awscni_assigned_ip_addresses", "The number of IP addresses assigned to pods")
	def("counter", "awscni_force_removed_enis", "The number of ENIs force removed while they had assigned pods")
	def("counter", "awscni_force_removed_ips", "The number of IPs force removed while they had assigned pods")
	def("gauge", "awscni_total_ipv4_prefixes", "The total number of IPv4 prefixes")
	def("gauge", "awscni_assigned_ip_per_cidr", "The total number of IP addresses assigned per cidr", "cidr")
	def("counter", "awscni_no_available_ip_addresses", "The number of pod IP assignments that fail due to no available IP addresses")
	def("gauge", "awscni_assigned_ip_per_eni", "The number of allocated ips partitioned by eni", "eni")
	def("histogram", "awscni_ipamd_startup_duration_seconds", "The duration of IPAMD startup from process start to ready to serve CNI requests", "success", "with_api_server", "failure_reason")
	def("histogram", "awscni_ipamd_node_initialization_duration_seconds", "The duration of node initialization during IPAMD startup", "success")
	def("gauge", "awscni_connmark_backend", "The connmark backend in use; the active backend's series is set to 1", "backend")
	def("counter", "awscni_connmark_reconcile_total", "The number of connmark Setup/Cleanup reconciliations by result", "result")
	// ipamD creates these two series at 0 when it registers.
	families["awscni_connmark_reconcile_total"].c.(*prometheus.CounterVec).WithLabelValues("success")
	families["awscni_connmark_reconcile_total"].c.(*prometheus.CounterVec).WithLabelValues("error")
	def("gauge", "awscni_build_info", "A metric with a constant '1' value labeled by version, revision, and goversion from which amazon-vpc-cni-k8s was built.", "version", "goversion")
	families["awscni_build_info"].c.(*prometheus.GaugeVec).WithLabelValues(ipamdVersion, runtime.Version()).Set(1)
}

// command is one control line.
type command struct {
	Op     string            `json:"op"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	Value  float64           `json:"value"`
}

// apply changes one collector; the caller holds stateMu.
func apply(cmd *command) error {
	f, ok := families[cmd.Name]
	if !ok {
		return fmt.Errorf("unknown family %q", cmd.Name)
	}
	if len(f.labels) == 0 && len(cmd.Labels) != 0 {
		return fmt.Errorf("%s has no labels", cmd.Name)
	}
	lv := prometheus.Labels(cmd.Labels)
	switch {
	case cmd.Op == "set" && f.kind == "gauge":
		if g, ok := f.c.(prometheus.Gauge); ok {
			g.Set(cmd.Value)
			return nil
		}
		g, err := f.c.(*prometheus.GaugeVec).GetMetricWith(lv)
		if err == nil {
			g.Set(cmd.Value)
		}
		return err
	case cmd.Op == "add" && f.kind == "counter":
		if cmd.Value < 0 || math.IsNaN(cmd.Value) {
			return fmt.Errorf("a counter only goes up")
		}
		if c, ok := f.c.(prometheus.Counter); ok {
			c.Add(cmd.Value)
			return nil
		}
		c, err := f.c.(*prometheus.CounterVec).GetMetricWith(lv)
		if err == nil {
			c.Add(cmd.Value)
		}
		return err
	case cmd.Op == "observe" && f.kind == "summary":
		o, err := f.c.(*prometheus.SummaryVec).GetMetricWith(lv)
		if err == nil {
			o.Observe(cmd.Value)
		}
		return err
	case cmd.Op == "observe" && f.kind == "histogram":
		o, err := f.c.(*prometheus.HistogramVec).GetMetricWith(lv)
		if err == nil {
			o.Observe(cmd.Value)
		}
		return err
	}
	return fmt.Errorf("%s does not apply to %s (a %s)", cmd.Op, cmd.Name, f.kind)
}

// seriesKey is name{a="x",b="y"} with the labels in name order (as the registry gives them).
func seriesKey(name string, pairs []*dto.LabelPair, extra ...string) string {
	parts := make([]string, 0, len(pairs)+1)
	for _, p := range pairs {
		parts = append(parts, fmt.Sprintf("%s=%q", p.GetName(), p.GetValue()))
	}
	if len(extra) == 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", extra[0], extra[1]))
	}
	if len(parts) == 0 {
		return name
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// snapshot is every awscni_* sample and process_start_time_seconds the registry holds.
func snapshot() (map[string]float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "awscni_") && name != "process_start_time_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			lp := m.GetLabel()
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[seriesKey(name, lp)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[seriesKey(name, lp)] = m.GetGauge().GetValue()
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					out[seriesKey(name, lp, "quantile", strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64))] = q.GetValue()
				}
				out[seriesKey(name+"_sum", lp)] = s.GetSampleSum()
				out[seriesKey(name+"_count", lp)] = float64(s.GetSampleCount())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					out[seriesKey(name+"_bucket", lp, "le", strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64))] = float64(b.GetCumulativeCount())
				}
				out[seriesKey(name+"_bucket", lp, "le", "+Inf")] = float64(h.GetSampleCount())
				out[seriesKey(name+"_sum", lp)] = h.GetSampleSum()
				out[seriesKey(name+"_count", lp)] = float64(h.GetSampleCount())
			default:
				out[seriesKey(name, lp)] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// wire is what one response put on the socket: its head, and whether its body is complete.
type wire struct {
	head     []byte
	headLen  int // 0 until the head's blank line went out
	bytes    int64
	tail     []byte // last bytes written, to see a chunked body's terminator
	chunked  bool
	clen     int64
	status   int
	encoding string
}

const maxHead = 8192

func (w *wire) feed(p []byte) {
	w.bytes += int64(len(p))
	if w.headLen == 0 && len(w.head) < maxHead {
		w.head = append(w.head, p...)
		if i := bytes.Index(w.head, []byte("\r\n\r\n")); i >= 0 {
			w.headLen = i + 4
			w.head = w.head[:i]
			w.parseHead()
		}
	}
	w.tail = append(w.tail, p...)
	if len(w.tail) > 5 {
		w.tail = w.tail[len(w.tail)-5:]
	}
}

func (w *wire) parseHead() {
	w.clen = -1
	lines := strings.Split(string(w.head), "\r\n")
	if f := strings.Fields(lines[0]); len(f) >= 2 {
		w.status, _ = strconv.Atoi(f[1])
	}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "transfer-encoding":
			w.chunked = strings.EqualFold(v, "chunked")
		case "content-length":
			w.clen, _ = strconv.ParseInt(v, 10, 64)
		case "content-encoding":
			w.encoding = v
		}
	}
}

// complete: the whole response went out (a chunked body's last chunk, or Content-Length bytes).
func (w *wire) complete() bool {
	if w.headLen == 0 {
		return false
	}
	if w.chunked {
		return string(w.tail) == "0\r\n\r\n"
	}
	return w.clen >= 0 && w.bytes-int64(w.headLen) == w.clen
}

// scrape is one answered GET /metrics, reported by "served".
type scrape struct {
	TimeMs          float64            `json:"t_ms"`
	AcceptEncoding  string             `json:"accept_encoding"`
	Proto           string             `json:"proto"`
	Status          int                `json:"status"`
	ContentEncoding string             `json:"content_encoding"`
	Chunked         bool               `json:"chunked"`
	ContentLength   int64              `json:"content_length"`
	WireBytes       int64              `json:"wire_bytes"`
	Values          map[string]float64 `json:"values"`
	w               *wire
}

var (
	stateMu sync.Mutex // collectors: a control change never lands inside a scrape
	wireMu  sync.Mutex // pending scrapes and what their connections wrote
	pending []*scrape
)

// tapConn sees every byte the server writes to one connection.
type tapConn struct {
	net.Conn
	cur *wire // the response being written; guarded by wireMu
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	wireMu.Lock()
	if c.cur != nil {
		c.cur.feed(p[:n])
	}
	wireMu.Unlock()
	return n, err
}

type tapListener struct{ net.Listener }

func (l tapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c}, nil
}

type connKey struct{}

// metricsHandler serves promhttp.Handler() and records what it served.
func metricsHandler() http.Handler {
	h := promhttp.Handler()
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		s := &scrape{AcceptEncoding: r.Header.Get("Accept-Encoding"), Proto: r.Proto, w: &wire{}}
		if c, ok := r.Context().Value(connKey{}).(*tapConn); ok {
			wireMu.Lock()
			c.cur = s.w
			wireMu.Unlock()
		}
		stateMu.Lock()
		defer stateMu.Unlock()
		s.TimeMs = float64(time.Now().UnixNano()) / 1e6
		vals, err := snapshot()
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		s.Values = vals
		wireMu.Lock()
		pending = append(pending, s)
		wireMu.Unlock()
		h.ServeHTTP(rw, r)
	})
}

// takeServed removes and returns the scrapes whose responses are complete on the wire.
func takeServed() []*scrape {
	wireMu.Lock()
	defer wireMu.Unlock()
	done := []*scrape{}
	rest := pending[:0]
	for _, s := range pending {
		if s.w.complete() {
			s.Status, s.ContentEncoding, s.Chunked = s.w.status, s.w.encoding, s.w.chunked
			s.ContentLength, s.WireBytes = s.w.clen, s.w.bytes
			done = append(done, s)
		} else {
			rest = append(rest, s)
		}
	}
	pending = rest
	sort.SliceStable(done, func(i, j int) bool { return done[i].TimeMs < done[j].TimeMs })
	return done
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address:port to serve /metrics on")
	flag.Parse()
	registerIpamd()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipamd_go:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metricsHandler())
	srv := &http.Server{
		Handler:      mux,
		ReadTimeout:  5 * time.Second, // ipamD's SetupMetricsServer
		WriteTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	go func() { _ = srv.Serve(tapListener{ln}) }()

	out := json.NewEncoder(os.Stdout)
	vals, err := snapshot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipamd_go:", err)
		os.Exit(1)
	}
	_ = out.Encode(map[string]interface{}{"addr": ln.Addr().String(), "pid": os.Getpid(),
		"process_start_time_seconds": vals["process_start_time_seconds"]})

	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			_ = out.Encode(map[string]interface{}{"ok": false, "error": err.Error()})
			continue
		}
		switch cmd.Op {
		case "served":
			_ = out.Encode(map[string]interface{}{"ok": true, "served": takeServed()})
		case "exit":
			stop()
			_ = out.Encode(map[string]interface{}{"ok": true, "served": takeServed()})
			os.Exit(0)
		default:
			stateMu.Lock()
			err := apply(&cmd)
			stateMu.Unlock()
			if err != nil {
				_ = out.Encode(map[string]interface{}{"ok": false, "error": err.Error()})
			} else {
				_ = out.Encode(map[string]interface{}{"ok": true})
			}
		}
	}
	stop()
}
