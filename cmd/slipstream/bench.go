package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The bench's bounds.
const (
	benchDefaultCount = 100000
	benchMaxCount     = 10_000_000       // -duration alone, closed loop
	benchMaxDuration  = 10 * time.Minute // -duration 0
	benchMaxIdle      = 100_000
)

// benchOptions are the bench's flags.
type benchOptions struct {
	URL          string        `json:"url,omitempty"`
	Mesh         string        `json:"mesh,omitempty"`
	Publishers   int           `json:"publishers"`
	Subscribers  int           `json:"subscribers"`
	Size         int           `json:"size"`
	Count        int64         `json:"count"`
	Duration     time.Duration `json:"-"`
	Rate         float64       `json:"rate"`
	Inflight     int           `json:"inflight"`
	Warmup       int64         `json:"warmup"`
	Idle         int           `json:"idle_connections,omitempty"`
	Baseline     string        `json:"baseline,omitempty"`
	DrainTimeout time.Duration `json:"-"`
	JSON         bool          `json:"-"`
	Progress     time.Duration `json:"-"`
	CPUProfile   string        `json:"-"`
	MemProfile   string        `json:"-"`
	TraceSample  float64       `json:"trace_sample,omitempty"` // -1: tracing off (the default config's)
	PID          int           `json:"pid,omitempty"`
	DiskProbe    string        `json:"disk_probe,omitempty"`
	DurationText string        `json:"duration"`
}

func parseBenchFlags(args []string, stderr io.Writer) (*benchOptions, error) {
	o := &benchOptions{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: slipstream bench [flags]

Load-tests an instance: publishers send SK messages (closed loop, or open loop
at -rate), subscribers receive and ACK them; it reports publish and delivery
throughput, publish->ACK and publish->delivery latency, and checks that every
subscriber got every ACKed message exactly once (exit 1 if not). Without
-url it runs the embedded default pipeline in-process on 127.0.0.1 with a
temp data dir. Only 127.0.0.1 traffic when in-process.

With -mesh it starts 3 in-process instances (bench-1..3) linked by
websocket_client peers, publishes on bench-1 and connects -subscribers to
each of bench-2 and bench-3, and reports the deliveries per instance.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.URL, "url", "", "an instance's WebSocket URL (ws://host:port/ws); empty: run one in-process")
	fs.StringVar(&o.Mesh, "mesh", "", "run 3 linked in-process instances: triangle (every pair linked) or line (bench-1 - bench-2 - bench-3); publishers on bench-1, subscribers on the others")
	fs.IntVar(&o.Publishers, "publishers", 1, "publishing connections")
	fs.IntVar(&o.Subscribers, "subscribers", 1, "subscribing connections (HELLO ids bench-sub-<i>); with -mesh, on each of the other instances")
	fs.IntVar(&o.Size, "size", 300, "message frame size in bytes (approximate; padded)")
	fs.Int64Var(&o.Count, "count", benchDefaultCount, "messages to measure (after -warmup); with only -duration: unbounded up to the time")
	fs.DurationVar(&o.Duration, "duration", 0, "stop publishing after this long (0: at most "+benchMaxDuration.String()+")")
	fs.Float64Var(&o.Rate, "rate", 0, "open loop: messages per second over all publishers (0: closed loop, as fast as ACKs allow)")
	fs.IntVar(&o.Inflight, "inflight", 256, "publishes in flight per publisher (closed loop; the open loop's cap defaults to one second of -rate)")
	fs.Int64Var(&o.Warmup, "warmup", 0, "messages sent first and left out of every figure")
	fs.IntVar(&o.Idle, "idle", 0, "connections held open without traffic during the run (anonymous, to the publishers' instance)")
	fs.StringVar(&o.Baseline, "baseline", "", `"relay": also measure a bare JSON WebSocket relay in this process and print the ratio (with -mesh: 3 relays chained as a tree, a star for triangle)`)
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 30*time.Second, "how long to wait for outstanding ACKs and deliveries after publishing")
	fs.BoolVar(&o.JSON, "json", false, "print the summary as JSON")
	fs.DurationVar(&o.Progress, "progress", time.Second, "interval of the progress line on stderr (0: none)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the whole process (instance, relay and clients) to this file")
	fs.IntVar(&o.PID, "pid", 0, "with -url: the instance's process id on this machine, whose CPU and RSS the summary reports (in-process: this process's)")
	fs.Float64Var(&o.TraceSample, "trace-sample", -1, "in-process only: turn tracing on with this sample_ratio (0..1), spans exported to the stdout exporter and discarded, to measure tracing's cost; -1: off, as in the default config")
	fs.StringVar(&o.DiskProbe, "disk-probe", "", fmt.Sprintf("after the run, time %d appends of one frame with fsync, %s apart, in a file in this directory (give one on the instance's data_dir file system; in-process, the data dir is under %s): the floor under publish->ACK", diskProbeAppends, diskProbeGap, os.TempDir()))
	fs.StringVar(&o.MemProfile, "memprofile", "", "write a heap profile of the whole process to this file when the measured load has been delivered (before any connection closes; not for the baseline)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, err
		}
		return nil, &exitCodeError{code: exitUsage}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Sprintf("bench takes no arguments (got %q)", fs.Args())}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case o.Publishers < 1 || o.Subscribers < 0:
		return nil, &usageError{"bench needs -publishers >= 1 and -subscribers >= 0"}
	case o.Count < 1 || o.Warmup < 0:
		return nil, &usageError{"bench needs -count >= 1 and -warmup >= 0"}
	case o.Idle < 0 || o.Idle > benchMaxIdle:
		return nil, &usageError{fmt.Sprintf("-idle must be between 0 and %d", benchMaxIdle)}
	case o.Duration < 0 || o.Rate < 0 || math.IsInf(o.Rate, 0) || math.IsNaN(o.Rate):
		return nil, &usageError{"-duration and -rate must not be negative"}
	case o.Inflight < 1:
		return nil, &usageError{"bench needs -inflight >= 1"}
	case o.Baseline != "" && o.Baseline != "relay":
		return nil, &usageError{fmt.Sprintf("unknown -baseline %q (known: relay)", o.Baseline)}
	case o.Size < 0 || o.Size > 1<<20:
		return nil, &usageError{"-size must be between 0 and 1048576"}
	case o.Mesh != "" && meshShapes[o.Mesh] == nil:
		return nil, &usageError{fmt.Sprintf("unknown -mesh %q (known: %s)", o.Mesh, meshShapeNames())}
	case o.TraceSample != -1 && (o.TraceSample < 0 || o.TraceSample > 1 || math.IsNaN(o.TraceSample)):
		return nil, &usageError{"-trace-sample must be between 0 and 1 (or -1: tracing off)"}
	case o.TraceSample != -1 && o.Mesh != "":
		return nil, &usageError{"-trace-sample is for the single in-process instance, not -mesh"}
	case o.TraceSample != -1 && o.URL != "":
		return nil, &usageError{"-trace-sample configures in-process instances; with -url, set tracing in the instance's config"}
	case o.PID != 0 && (o.URL == "" || o.PID < 0):
		return nil, &usageError{"-pid names the process of the instance at -url (in-process runs measure this process)"}
	case o.Mesh != "" && o.URL != "":
		return nil, &usageError{"-mesh runs its own instances; it cannot be used with -url"}
	}
	if set["duration"] && !set["count"] {
		// Bounded by time; the count is only a safety bound.
		o.Count = benchMaxCount
		if o.Rate > 0 {
			o.Count = max(1, int64(math.Ceil(o.Rate*o.Duration.Seconds())))
		}
	}
	if o.Count+o.Warmup > benchMaxCount {
		return nil, &usageError{fmt.Sprintf("-count plus -warmup may be at most %d", benchMaxCount)}
	}
	if o.DiskProbe != "" {
		if fi, err := os.Stat(o.DiskProbe); err != nil || !fi.IsDir() {
			return nil, &usageError{fmt.Sprintf("-disk-probe %q is not a directory (give one on the file system of the instance's data_dir)", o.DiskProbe)}
		}
	}
	if o.Rate > 0 && !set["inflight"] {
		// Open loop: room for a second of the rate, so that the cap does not
		// hold the schedule back (which would hide latency).
		o.Inflight = max(o.Inflight, int(math.Ceil(o.Rate/float64(o.Publishers))))
	}
	if o.Duration == 0 {
		o.Duration = benchMaxDuration
	}
	o.DurationText = o.Duration.String()
	return o, nil
}

// benchSummary is what the bench prints.
type benchSummary struct {
	Machine  benchMachine  `json:"machine"`
	Options  *benchOptions `json:"options"`
	Result   *loadResult   `json:"result"`
	Baseline *loadResult   `json:"baseline,omitempty"`
	Disk     *diskResult   `json:"disk,omitempty"`
	// Ratio is result / baseline for each figure (throughput: higher is
	// better for the instance; latency: lower is better).
	Ratio map[string]float64 `json:"ratio,omitempty"`
}

type benchMachine struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go"`
	OS        string `json:"os"`
	// GCPercent is this process's GOGC during the run: the in-process
	// instances get run's default (see applyGCDefault); with -url it is
	// the bench client's own (the instance's is its own business).
	GCPercent int `json:"gc_percent"`
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseBenchFlags(args, stderr)
	if err == flag.ErrHelp {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	gc := gcPercent()
	if o.URL == "" { // in-process instances run as `slipstream run` would
		gc = applyGCDefault(gcPercentEnv)
	}
	sum := &benchSummary{
		Machine: benchMachine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, GCPercent: gc},
		Options: o,
	}
	switch {
	case o.Mesh != "":
		// The mesh's peer links carry the run's tag, so that the run's
		// messages are routed across them: it is chosen before they start.
		sum.Result, err = benchMesh(ctx, o, newRunTag(), stderr)
	case o.URL != "":
		t := singleTarget("instance", o.URL, nil)
		t.memProfile, t.remote = o.MemProfile, true
		sum.Result, err = runLoad(ctx, o, t, stderr)
	default:
		sum.Result, err = benchLocal(ctx, o, stderr)
	}
	if err != nil {
		return err
	}
	if o.Baseline == "relay" {
		if o.Mesh != "" {
			sum.Baseline, err = relayMeshLoad(ctx, o, newRunTag(), stderr)
		} else {
			sum.Baseline, err = relayLoad(ctx, o, stderr)
		}
		if err != nil {
			return err
		}
		sum.Ratio = ratios(sum.Result, sum.Baseline)
	}

	if o.DiskProbe != "" {
		if sum.Disk, err = diskProbe(ctx, o.DiskProbe, sum.Result.FrameBytes, diskProbeAppends, diskProbeGap, diskProbeMaxTime); err != nil {
			return err
		}
	}
	if o.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	} else {
		printSummary(stdout, sum)
	}
	var bad []string
	for _, r := range []*loadResult{sum.Result, sum.Baseline} {
		if r != nil && (r.Missing > 0 || r.Duplicates > 0 || r.Unexpected > 0) {
			bad = append(bad, fmt.Sprintf("%s: %d missing, %d duplicate, %d unexpected deliveries",
				r.Target, r.Missing, r.Duplicates, r.Unexpected))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("bench: delivery check failed: %s", strings.Join(bad, "; "))
	}
	return nil
}

// benchLocal runs the load against an in-process instance and stops it
// (removing its data) before returning.
func benchLocal(ctx context.Context, o *benchOptions, stderr io.Writer) (*loadResult, error) {
	local, err := startLocal(stderr, localSpec{Trace: o.TraceSample >= 0, TraceSample: o.TraceSample})
	if err != nil {
		return nil, fmt.Errorf("bench: start the in-process instance: %w", err)
	}
	t := singleTarget("slipstream", local.url, local)
	t.memProfile = o.MemProfile
	res, err := runLoad(ctx, o, t, stderr)
	if serr := local.stop(); serr != nil && err == nil {
		err = fmt.Errorf("bench: stop the in-process instance: %w", serr)
	}
	return res, err
}

// relayLoad runs the load against a relay in this process, and closes it.
func relayLoad(ctx context.Context, o *benchOptions, stderr io.Writer) (*loadResult, error) {
	r, err := startRelay()
	if err != nil {
		return nil, fmt.Errorf("bench: start the relay: %w", err)
	}
	defer r.close()
	return runLoad(ctx, o, singleTarget("relay", r.url(), nil), stderr)
}

func ratios(r, b *loadResult) map[string]float64 {
	ratio := func(x, y float64) float64 {
		if y == 0 {
			return 0
		}
		return math.Round(x/y*1000) / 1000
	}
	m := map[string]float64{
		"publish_msgs_per_s":   ratio(r.PublishRate, b.PublishRate),
		"delivered_msgs_per_s": ratio(mean(r.DeliveredRates), mean(b.DeliveredRates)),
		"ack_p50":              ratio(r.AckLatency.P50, b.AckLatency.P50),
		"ack_p99":              ratio(r.AckLatency.P99, b.AckLatency.P99),
		"delivery_p50":         ratio(r.DeliveryLatency.P50, b.DeliveryLatency.P50),
		"delivery_p99":         ratio(r.DeliveryLatency.P99, b.DeliveryLatency.P99),
	}
	if r.Usage != nil && b.Usage != nil {
		m["cpu_us_per_msg"] = ratio(r.Usage.CPUMicrosPerMessage, b.Usage.CPUMicrosPerMessage)
	}
	// Per instance, by position (bench-2 against relay-2, ...).
	for i := range min(len(r.Instances), len(b.Instances)) {
		ri, bi := r.Instances[i], b.Instances[i]
		p := instanceKey(i)
		m[p+"delivered_msgs_per_s"] = ratio(mean(ri.DeliveredRates), mean(bi.DeliveredRates))
		m[p+"delivery_p50"] = ratio(ri.DeliveryLatency.P50, bi.DeliveryLatency.P50)
		m[p+"delivery_p99"] = ratio(ri.DeliveryLatency.P99, bi.DeliveryLatency.P99)
	}
	return m
}

// instanceKey prefixes the ratio keys of the i-th subscribed instance of a
// mesh run (the second instance: "instance2_").
func instanceKey(i int) string { return fmt.Sprintf("instance%d_", i+2) }

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func printSummary(w io.Writer, s *benchSummary) {
	o := s.Options
	mode := fmt.Sprintf("closed loop, %d in flight per publisher", o.Inflight)
	if o.Rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f msgs/s (at most %d in flight per publisher)", o.Rate, o.Inflight)
	}
	subs := fmt.Sprintf("%d subscriber(s)", o.Subscribers)
	if o.Mesh != "" {
		var names []string
		for _, in := range s.Result.Instances {
			names = append(names, in.Instance)
		}
		subs = fmt.Sprintf("%d subscriber(s) on each of %s, %s mesh of 3 instances, publishing on the first",
			o.Subscribers, strings.Join(names, " and "), o.Mesh)
	}
	if o.Idle > 0 {
		subs += fmt.Sprintf(", %d idle connections", o.Idle)
	}
	fmt.Fprintf(w, "slipstream bench: %d publisher(s), %s, ~%d-byte frames, %s; %s, %d CPUs, GOGC %d\n\n",
		o.Publishers, subs, s.Result.FrameBytes, mode, s.Machine.GoVersion, s.Machine.CPUs, s.Machine.GCPercent)
	runs := []*loadResult{s.Result}
	if s.Baseline != nil {
		runs = append(runs, s.Baseline)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	row := func(name string, f func(r *loadResult) string, ratio string) {
		fmt.Fprint(tw, name)
		for _, r := range runs {
			fmt.Fprint(tw, "\t"+f(r))
		}
		if s.Baseline != nil {
			if v, ok := s.Ratio[ratio]; ok {
				fmt.Fprintf(tw, "\t%.3f", v)
			} else {
				fmt.Fprint(tw, "\t")
			}
		}
		fmt.Fprintln(tw)
	}
	header := "\t" + s.Result.Target
	if s.Baseline != nil {
		header += "\t" + s.Baseline.Target + " (baseline)\tratio"
	}
	fmt.Fprintln(tw, header)
	lat := func(l func(r *loadResult) latency, q func(latency) float64) func(r *loadResult) string {
		return func(r *loadResult) string { return fmt.Sprintf("%.3f ms", q(l(r))) }
	}
	ack := func(r *loadResult) latency { return r.AckLatency }
	dlv := func(r *loadResult) latency { return r.DeliveryLatency }
	row("messages measured (sent, incl. warmup)", func(r *loadResult) string {
		return fmt.Sprintf("%d (%d)", r.Messages, r.Sent)
	}, "")
	row("duration", func(r *loadResult) string { return fmt.Sprintf("%.2fs", r.DurationSeconds) }, "")
	row("publish msgs/s (ACKed)", func(r *loadResult) string { return fmt.Sprintf("%.0f", r.PublishRate) }, "publish_msgs_per_s")
	row("delivered msgs/s per subscriber", func(r *loadResult) string {
		parts := make([]string, len(r.DeliveredRates))
		for i, v := range r.DeliveredRates {
			parts[i] = fmt.Sprintf("%.0f", v)
		}
		return strings.Join(parts, " ")
	}, "delivered_msgs_per_s")
	for _, kind := range []struct {
		name, key string
		of        func(r *loadResult) latency
	}{{"publish->ACK", "ack_", ack}, {"publish->delivery", "delivery_", dlv}} {
		for _, q := range []struct {
			name, key string
			f         func(latency) float64
		}{
			{"p50", "p50", func(l latency) float64 { return l.P50 }},
			{"p90", "", func(l latency) float64 { return l.P90 }},
			{"p99", "p99", func(l latency) float64 { return l.P99 }},
			{"p99.9", "", func(l latency) float64 { return l.P999 }},
			{"max", "", func(l latency) float64 { return l.Max }},
		} {
			key := ""
			if q.key != "" {
				key = kind.key + q.key
			}
			row(kind.name+" "+q.name, lat(kind.of, q.f), key)
		}
	}
	for i := range s.Result.Instances {
		in := func(r *loadResult) *instanceResult {
			if i < len(r.Instances) {
				return &r.Instances[i]
			}
			return &instanceResult{}
		}
		name := func(r *loadResult) string { return in(r).Instance }
		p := instanceKey(i)
		row(fmt.Sprintf("instance %d: name", i+2), name, "")
		row(fmt.Sprintf("instance %d: delivered msgs/s per subscriber", i+2), func(r *loadResult) string {
			parts := make([]string, len(in(r).DeliveredRates))
			for j, v := range in(r).DeliveredRates {
				parts[j] = fmt.Sprintf("%.0f", v)
			}
			return strings.Join(parts, " ")
		}, p+"delivered_msgs_per_s")
		for _, q := range []struct {
			name, key string
			f         func(latency) float64
		}{
			{"p50", "delivery_p50", func(l latency) float64 { return l.P50 }},
			{"p99", "delivery_p99", func(l latency) float64 { return l.P99 }},
			{"max", "", func(l latency) float64 { return l.Max }},
		} {
			key := ""
			if q.key != "" {
				key = p + q.key
			}
			row(fmt.Sprintf("instance %d: publish->delivery %s", i+2, q.name), func(r *loadResult) string {
				return fmt.Sprintf("%.3f ms", q.f(in(r).DeliveryLatency))
			}, key)
		}
		row(fmt.Sprintf("instance %d: missing / duplicate", i+2), func(r *loadResult) string {
			return fmt.Sprintf("%d / %d", in(r).Missing, in(r).Duplicates)
		}, "")
	}
	if s.Result.Usage != nil {
		u := func(f func(*procUsage) string) func(r *loadResult) string {
			return func(r *loadResult) string {
				if r.Usage == nil {
					return "-"
				}
				return f(r.Usage)
			}
		}
		row("CPU of "+s.Result.Usage.Scope, u(func(x *procUsage) string {
			return fmt.Sprintf("%.2fs (%.2f cores)", x.CPUSeconds, x.CPUCores)
		}), "")
		row("CPU per message", u(func(x *procUsage) string { return fmt.Sprintf("%.1f µs", x.CPUMicrosPerMessage) }), "cpu_us_per_msg")
		row("RSS peak / end", u(func(x *procUsage) string { return fmt.Sprintf("%.0f / %.0f MiB", x.RSSPeakMiB, x.RSSEndMiB) }), "")
	}
	if o.Rate > 0 {
		row("send lag behind schedule p99 / max", func(r *loadResult) string {
			return fmt.Sprintf("%.3f / %.3f ms", r.ScheduleLag.P99, r.ScheduleLag.Max)
		}, "")
	}
	row("publish errors (unACKed)", func(r *loadResult) string { return fmt.Sprintf("%d (%d)", r.Errors, r.Unacked) }, "")
	row("missing / duplicate deliveries", func(r *loadResult) string {
		return fmt.Sprintf("%d / %d", r.Missing, r.Duplicates)
	}, "")
	if s.Result.OutboxLeft != nil {
		row("outbox entries left after the run", func(r *loadResult) string {
			if r.OutboxLeft == nil {
				return "-"
			}
			return fmt.Sprint(*r.OutboxLeft)
		}, "")
	}
	tw.Flush()
	if s.Disk != nil {
		printDisk(w, s.Disk, s.Result.AckLatency)
	}
	for _, r := range runs {
		for _, e := range r.ErrorSamples {
			fmt.Fprintf(w, "%s error: %s\n", r.Target, e)
		}
	}
}
